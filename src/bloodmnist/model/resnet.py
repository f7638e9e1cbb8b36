"""torchvision ResNets adapted to 28-px inputs: 3x3/stride-1 stem, no max-pool, new head.

Pretrained ImageNet weights (torchvision IMAGENET1K_V1 layout) are transferred layer by layer;
the 7x7 stem filters are resized to 3x3 by bicubic interpolation and the classifier is new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bloodmnist.errors import CheckpointError, DownloadError

log = logging.getLogger(__name__)


@dataclass
class PretrainedInfo:
    """What happened to the `pretrained` request; recorded in the manifest and summary."""

    requested: str
    used: bool
    source: str | None  # file the weights came from
    message: str


def adapt_stem_weight(w7: torch.Tensor) -> torch.Tensor:
    """(64,3,7,7) ImageNet stem filters -> (64,3,3,3) by bicubic interpolation."""
    return F.interpolate(w7.float(), size=(3, 3), mode="bicubic", align_corners=False)


def adapted_torchvision_resnet(name: str, num_classes: int = 8) -> nn.Module:
    """A torchvision ResNet (`resnet18`, `resnet34`, `resnet50`) adapted to 28 px: 3x3 stride-1
    stem and no max-pool, so the 28-px image is not cut to 7 px before the first block."""
    import torchvision  # here, not at the top: ~2 s that config checks and errors need not wait

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def transfer_weights(model: nn.Module, src: dict[str, torch.Tensor]) -> None:
    """Copy every backbone tensor; resize conv1; keep the new head. Errors on a layout mismatch."""
    own = model.state_dict()
    if "conv1.weight" not in src or src["conv1.weight"].shape[:2] != (64, 3):
        raise CheckpointError(
            "pretrained weights are not a torchvision ResNet-18 state_dict "
            "(no conv1.weight of shape (64,3,k,k))"
        )
    new = {}
    for key, value in own.items():
        if key.startswith("fc."):
            new[key] = value  # fresh 8-class head
        elif key == "conv1.weight":  # 3x3 stems get the filters resized, the 7x7 stem as is
            w = src[key] if value.shape == src[key].shape else adapt_stem_weight(src[key])
            new[key] = w.to(value.dtype)
        elif key in src and src[key].shape == value.shape:
            new[key] = src[key].to(value.dtype)
        elif key.endswith("num_batches_tracked"):  # torchvision's older files predate it
            new[key] = value
        else:
            raise CheckpointError(
                f"pretrained weights lack or mismatch '{key}' (expected shape {tuple(value.shape)})"
            )
    model.load_state_dict(new)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(
            f"cannot read pretrained weights {path}: {exc}".splitlines()[0]
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    return obj


def resolve_pretrained(
    request: str, url: str, cache_dir: Path
) -> tuple[dict[str, torch.Tensor] | None, PretrainedInfo]:
    """none: scratch; a path: that file (must load); auto: cache or download, else scratch."""
    if request == "none":
        return None, PretrainedInfo(request, False, None, "training from scratch (pretrained=none)")
    if request != "auto":
        path = Path(request)
        if not path.is_file():
            raise CheckpointError(f"pretrained weights file not found: {path}")
        return _read_state_dict(path), PretrainedInfo(
            request, True, str(path), f"ImageNet weights from {path}"
        )
    from bloodmnist.data.download import download_pretrained

    try:
        path = download_pretrained(url, cache_dir, timeout=20.0, retries=1, progress=False)
    except DownloadError as exc:
        msg = (
            f"ImageNet weights unavailable ({exc}); training from scratch. Expect lower accuracy "
            "than the published pretrained 97.22%."
        )
        return None, PretrainedInfo(request, False, None, msg)
    return _read_state_dict(path), PretrainedInfo(
        request, True, str(path), f"ImageNet weights from {path}"
    )
