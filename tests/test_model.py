"""The adapted ResNet-18 and ImageNet weight transfer, with generated torchvision-layout weights."""

from __future__ import annotations

import copy
import hashlib
import io
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bloodmnist.errors import CheckpointError
from bloodmnist.model import build_model
from bloodmnist.model.resnet import resolve_pretrained
from httpserver import TestHTTPServer, closed_port_url


def generated_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 layout (1000-class head) filled with seeded random values."""
    template = torchvision.models.resnet18(weights=None).state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in template.items():
        if value.is_floating_point():
            rand = torch.randn(value.shape, generator=gen)
            out[key] = rand.abs() + 0.5 if key.endswith("running_var") else rand
        else:  # num_batches_tracked
            out[key] = torch.randint(1, 1000, value.shape, generator=gen, dtype=value.dtype)
    return out


@pytest.fixture(scope="module")
def imagenet_like() -> dict[str, torch.Tensor]:
    return generated_state_dict()


@pytest.fixture(scope="module")
def weights_bytes(imagenet_like: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(imagenet_like, buf)
    return buf.getvalue()


def test_structure_and_forward() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 8)
    conv1 = model.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.in_channels == 3 and conv1.out_channels == 64 and conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.in_features == 512 and model.fc.out_features == 8
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    assert build_model("resnet18", 3).fc.out_features == 3


def test_transfer_copies_backbone_resizes_stem_keeps_new_head(
    imagenet_like: dict[str, torch.Tensor],
) -> None:
    torch.manual_seed(1)
    fresh_fc = build_model("resnet18", 8).fc.weight.detach().clone()
    torch.manual_seed(1)
    model = build_model("resnet18", 8, state_dict=imagenet_like)
    own = model.state_dict()
    assert set(own) == set(imagenet_like)  # same keys; fc and conv1 differ in shape
    copied = 0
    for key, value in own.items():
        if key.startswith("fc.") or key == "conv1.weight":
            continue
        assert torch.equal(value, imagenet_like[key]), key
        copied += 1
    assert copied == len(own) - 3  # everything but conv1.weight, fc.weight, fc.bias
    expected = F.interpolate(
        imagenet_like["conv1.weight"], size=(3, 3), mode="bicubic", align_corners=False
    )
    assert own["conv1.weight"].shape == (64, 3, 3, 3)
    torch.testing.assert_close(own["conv1.weight"], expected, rtol=0, atol=0)
    assert own["fc.weight"].shape == (8, 512) and own["fc.bias"].shape == (8,)
    torch.testing.assert_close(own["fc.weight"], fresh_fc, rtol=0, atol=0)  # a fresh init
    assert not torch.equal(own["fc.weight"], imagenet_like["fc.weight"][:8])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 3, 28, 28))).all()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("drop", "layer3.1.bn2.running_mean"),
        ("drop", "layer1.0.conv1.weight"),
        ("shape", "layer2.0.downsample.0.weight"),
        ("shape", "bn1.weight"),
        ("drop", "conv1.weight"),
        ("shape", "conv1.weight"),
    ],
)
def test_layout_mismatch_is_a_checkpoint_error(
    imagenet_like: dict[str, torch.Tensor], change: str, key: str
) -> None:
    broken = dict(imagenet_like)
    if change == "drop":
        del broken[key]
    else:
        broken[key] = torch.zeros(7, *broken[key].shape[1:])
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", 8, state_dict=broken)
    assert key.split(".")[0] in str(info.value) and "\n" not in str(info.value)


def test_weights_saved_before_batchnorm_counted_batches_load(
    imagenet_like: dict[str, torch.Tensor],
) -> None:
    """torchvision's original ImageNet files predate BatchNorm's num_batches_tracked: they load
    (as torch's own load_state_dict takes them), every real tensor transferred."""
    old = {k: v for k, v in imagenet_like.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(imagenet_like)
    model = build_model("resnet18", 8, state_dict=old)
    own = model.state_dict()
    assert torch.equal(own["layer3.0.bn1.running_var"], old["layer3.0.bn1.running_var"])
    assert torch.equal(own["layer4.1.conv2.weight"], old["layer4.1.conv2.weight"])
    assert int(own["bn1.num_batches_tracked"]) == 0


def test_resnet9_shape_knobs_on_a_torchvision_network_are_reported(caplog) -> None:
    """width/depth do not shape resnet18 (a tune space may search them with model.arch): the
    network is torchvision's, and a warning says the knobs were not applied."""
    with caplog.at_level("WARNING", logger="bloodmnist.model.registry"):
        narrow = build_model("resnet18", 8, width=0.25)
    full = build_model("resnet18", 8)
    assert sum(p.numel() for p in narrow.parameters()) == sum(p.numel() for p in full.parameters())
    assert "model.width=0.25 and model.depth=1 shape the resnet9 family only" in caplog.text


def test_resolve_none_and_local_path(
    tmp_path: Path, imagenet_like: dict[str, torch.Tensor], weights_bytes: bytes
) -> None:
    state, info = resolve_pretrained("none", "http://127.0.0.1:9/never", tmp_path)
    assert state is None and info.used is False and info.source is None
    assert "scratch" in info.message
    path = tmp_path / "my-weights.pth"
    path.write_bytes(weights_bytes)
    state, info = resolve_pretrained(str(path), "http://127.0.0.1:9/never", tmp_path / "cache")
    assert info.used is True and info.source == str(path) and info.requested == str(path)
    assert state is not None and set(state) == set(imagenet_like)
    assert all(torch.equal(state[k], imagenet_like[k]) for k in imagenet_like)
    assert not (tmp_path / "cache").exists()  # a local file needs no cache
    model = build_model("resnet18", 8, state_dict=state)
    assert torch.equal(
        model.state_dict()["layer4.1.conv2.weight"], imagenet_like["layer4.1.conv2.weight"]
    )


def test_resolve_path_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        resolve_pretrained(str(missing), "", tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=re.escape(str(garbage))) as info:
        resolve_pretrained(str(garbage), "", tmp_path)
    assert "\n" not in str(info.value)


def _name(body: bytes) -> str:
    return f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"


def test_auto_downloads_from_local_server(
    tmp_path: Path, imagenet_like: dict[str, torch.Tensor], weights_bytes: bytes
) -> None:
    name = _name(weights_bytes)
    with TestHTTPServer() as server:
        url = server.serve(f"/models/{name}", weights_bytes)
        state, info = resolve_pretrained("auto", url, cache_dir=tmp_path)
        assert info.used is True and info.requested == "auto"
        assert info.source == str(tmp_path / name)
        assert (tmp_path / name).read_bytes() == weights_bytes
        assert state is not None and all(torch.equal(state[k], imagenet_like[k]) for k in state)
        assert server.counts[f"/models/{name}"] == 1
        # Second call: the verified cache is used, nothing is fetched again.
        state2, info2 = resolve_pretrained("auto", url, cache_dir=tmp_path)
        assert info2.used and server.counts[f"/models/{name}"] == 1
    model = build_model("resnet18", 8, state_dict=state2)
    assert torch.equal(model.state_dict()["layer1.0.bn1.bias"], imagenet_like["layer1.0.bn1.bias"])


def test_auto_with_corrupt_download_trains_from_scratch(
    tmp_path: Path, weights_bytes: bytes
) -> None:
    wrong_name = "resnet18-00000000.pth"  # the body's sha256 does not start with 00000000
    assert _name(weights_bytes) != wrong_name
    with TestHTTPServer() as server:
        url = server.serve(f"/{wrong_name}", weights_bytes)
        state, info = resolve_pretrained("auto", url, cache_dir=tmp_path)
    assert state is None and info.used is False
    assert "training from scratch" in info.message and "sha256" in info.message
    assert list(tmp_path.iterdir()) == []  # no partial or wrong file left behind


def test_auto_with_closed_port_trains_from_scratch(tmp_path: Path) -> None:
    url = closed_port_url("/resnet18-f37072fd.pth")
    state, info = resolve_pretrained("auto", url, cache_dir=tmp_path)
    assert state is None and info.used is False and info.source is None
    assert "training from scratch" in info.message
    assert url in info.message and "\n" not in info.message
    assert not (tmp_path / "resnet18-f37072fd.pth").exists()


def test_flops_of_a_model_with_synchronised_batchnorm(monkeypatch) -> None:
    """torchrun with train.sync_bn: torch's SyncBatchNorm refuses CPU tensors, so counting a
    copy of the trained model on the CPU failed every rank after training (no summary)."""
    import socket

    import torch.distributed as dist

    from bloodmnist.model.flops import flops_per_image

    plain = build_model("resnet9", 8, 28, width=0.25)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
        assert flops_per_image(synced, 28) == flops_per_image(plain, 28)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())  # untouched
    finally:
        dist.destroy_process_group()
