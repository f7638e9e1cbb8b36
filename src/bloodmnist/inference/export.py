"""Export a checkpoint to ONNX, embed its metadata, and prove parity before writing it.

Exporter: torch.onnx.export(..., dynamo=False), the TorchScript exporter. In torch 2.14 the
default (dynamo) exporter needs the extra `onnxscript` package (plus onnx_ir, sympy) and took
~5x longer here; the TorchScript one needs nothing beyond torch, runs offline, and gives the same
graph for this plain ResNet (max |diff| ~1e-6 for both). It is deprecated upstream (a
DeprecationWarning we silence); if a future torch removes it, switch to dynamo=True and add
onnxscript to the dependencies.

Opset 20: the newest the TorchScript exporter emits; ONNX Runtime supports it since 1.17, so any
current onnxruntime release runs the file.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bloodmnist import __version__
from bloodmnist.atomic import publish_new, temp_path
from bloodmnist.config import Config
from bloodmnist.data.download import file_sha256
from bloodmnist.data.source import load_data
from bloodmnist.inference.engines import INPUT_NAME, META_PREFIX, OUTPUT_NAMES
from bloodmnist.inference.inputs import InferenceError, resolve_model
from bloodmnist.inference.parity import Parity, check_parity
from bloodmnist.inference.tta_graph import (
    TTAGraph,
    check_exportable,
    tta_metadata,
)
from bloodmnist.model import model_from_config
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint, load_model_weights

EXPORT_OPSET = 20
PARITY_TOL = 1e-4  # max |delta prob| allowed between PyTorch fp32 and ONNX Runtime
PREPROCESSING = (
    "RGB uint8 HxW -> auto: BloodMNIST recipe (centre square crop of round(short side x 200/360), "
    "PIL bilinear resize to input_size, JPEG q75 round trip) when the short side > 2 x input_size, "
    "else bilinear resize; then x/255, (x - mean)/std, NCHW float32"
)


class ExportError(InferenceError):
    """The export failed or did not prove parity; nothing was written."""


class _LogitsAndProbs(nn.Module):
    """The exported graph: both outputs, so deployments need no softmax of their own. `probs`
    is softmax(logits / T) with the checkpoint's temperature (fitted on validation or fixed), if any
    (the raw logits stay available, and T is in the metadata)."""

    def __init__(self, model: nn.Module, temperature: float | None = None):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        scaled = logits if self.temperature is None else logits / self.temperature
        return logits, torch.softmax(scaled, dim=1)


def export_graph(
    model: nn.Module,
    path: Path,
    size: int,
    opset: int = EXPORT_OPSET,
    temperature: float | None = None,
    tta_cfg: Config | None = None,
) -> None:
    """fp32 graph with a dynamic batch axis: input (N,3,size,size) -> logits, probs (N,C);
    with `tta_cfg` (a checkpoint's config), the views of its `eval.tta_mode` averaged inside."""
    if tta_cfg is not None:
        wrapped: nn.Module = TTAGraph(model, tta_cfg, temperature).eval()
    else:
        wrapped = _LogitsAndProbs(model, temperature).eval()
    dummy = torch.zeros(2, 3, size, size)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter notice, see above
        # A TTA graph's flips are Slices with step -1, which the exporter cannot fold and says
        # so; they are left for ONNX Runtime to run, and the parity check that follows covers them
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        # the blur view's kernel shape is made a constant on purpose (predict.gaussian_blur3)
        warnings.filterwarnings(
            "ignore",
            "Converting a tensor to a Python integer",
            torch.jit.TracerWarning,
            module=r"bloodmnist\.evaluation\.predict",
        )
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch, **{name: batch for name in OUTPUT_NAMES}},
            do_constant_folding=True,
        )


def embed_metadata(path: Path, meta: dict[str, str]) -> None:
    """Check the graph and store `meta` as ONNX metadata_props (keys prefixed 'bloodmnist.')."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        full = META_PREFIX + key
        prop = existing.get(full) or proto.metadata_props.add()
        prop.key, prop.value = full, value
    proto.doc_string = "bloodmnist classifier; see metadata bloodmnist.*"
    onnx.save(proto, str(path))


def model_metadata(cfg: Config, ckpt: Path, state: dict, tta: bool = False) -> dict[str, str]:
    """The `bloodmnist.*` keys; a --tta graph's temperature is `temperature_tta` (a reader that
    predates --tta then finds no one-view T rather than a wrong one)."""
    t = graph_temperature(state, tta)
    input_text = "float32 NCHW RGB, (pixel/255 - mean)/std; outputs logits and probs (N, C)"
    return {
        "class_names": json.dumps(list(cfg.model.names())),
        "input_size": str(cfg.data.size),
        "mean": json.dumps(list(cfg.data.mean)),
        "std": json.dumps(list(cfg.data.std)),
        "input": input_text,
        "preprocessing": PREPROCESSING,
        "source_checkpoint": ckpt.name,
        "source_checkpoint_sha256": file_sha256(ckpt),
        "epoch": str(state["epoch"]),
        "arch": cfg.model.arch,
        "bloodmnist_version": __version__,
        "torch_version": torch.__version__,
        "opset": str(EXPORT_OPSET),
        **(tta_metadata(cfg, t, input_text) if tta else {}),
        **({"temperature": str(float(t))} if t is not None and not tta else {}),
    }


def graph_temperature(state: dict, tta: bool = False) -> float | None:
    """The checkpoint's temperature for the graph: the one-view T, or with `tta` the T for the
    mean of the TTA views."""
    return (state.get("temperature") or {}).get("tta" if tta else "plain")


def default_out(target: Path, ckpt: Path, tta: bool = False) -> Path:
    """RUN_DIR/model.onnx for a run folder, else the checkpoint's name with .onnx (model-tta,
    NAME-tta with `tta`)."""
    tag = "-tta" if tta else ""
    return (
        target / f"model{tag}.onnx" if target.is_dir() else ckpt.with_name(f"{ckpt.stem}{tag}.onnx")
    )


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out}: the file name must end in .onnx")
    if out.exists() or out.is_symlink():  # a dangling link too: it names a place the user chose
        raise ExportError(f"--out {out} already exists; choose a new file name")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist")


def _write_and_check(
    model: nn.Module,
    cfg: Config,
    tmp: Path,
    meta: dict[str, str],
    images: np.ndarray,
    temperature: float | None,
    tta: bool,
) -> Parity:
    """Write the graph with its metadata to `tmp` and measure parity; an exporter or checker
    failure becomes one error line (the caller removes `tmp`)."""
    try:
        export_graph(
            model, tmp, cfg.data.size, temperature=temperature, tta_cfg=cfg if tta else None
        )
        embed_metadata(tmp, meta)
    except Exception as exc:  # noqa: BLE001 - torch.onnx / onnx.checker raise many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"ONNX export failed: {reason}") from exc
    return check_parity(model, tmp, images, cfg, temperature, tta, PARITY_TOL)


def export_checkpoint(
    target: str | Path,
    out: str | Path | None = None,
    data: str | None = None,
    parity_images: int = 1024,
    tta: bool = False,
) -> dict:
    """Export, verify parity on real test images, then atomically write the .onnx file; `tta`
    puts the checkpoint's test-time augmentation into the graph."""
    t0 = time.perf_counter()
    target = Path(target).expanduser()
    ckpt = resolve_model(target)
    out_path = Path(out).expanduser() if out else default_out(target, ckpt, tta)
    _check_out(out_path)
    if parity_images < 1:
        raise ExportError("--parity-images must be >= 1")
    state = load_checkpoint(ckpt)
    cfg = checkpoint_config(state, ckpt)
    if tta:
        check_exportable(cfg.eval)
    model = model_from_config(cfg)
    load_model_weights(model, state, ckpt)
    model = model.float().eval()
    m = cfg.model
    dataset, info = load_data(
        data or cfg.data.path, cfg.data.size, m.num_classes, None, False, model=m
    )
    images = dataset.test.images[:parity_images]
    meta = model_metadata(cfg, ckpt, state, tta)
    temperature = graph_temperature(state, tta)
    tmp = temp_path(out_path)
    try:
        parity = _write_and_check(model, cfg, tmp, meta, images, temperature, tta)
        if not parity.passed:
            raise ExportError(
                f"ONNX parity check failed on {parity.n} test images: max |dprob| "
                f"{parity.max_abs_diff_prob:.2e} (limit {PARITY_TOL:.0e}), argmax agrees on "
                f"{parity.argmax_agree}/{parity.n}; {out_path} was not written"
            )
        record = {**asdict(parity), "data": info.path, "split": "test"}
        embed_metadata(tmp, {"parity": json.dumps(record)})
        try:  # never replaces: a file made at --out during the export stays as it is
            publish_new(tmp, out_path)
        except FileExistsError:
            raise ExportError(
                f"--out {out_path} appeared during the export; not replaced"
            ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "onnx": str(out_path),
        "checkpoint": str(ckpt),
        "checkpoint_sha256": meta["source_checkpoint_sha256"],
        "opset": EXPORT_OPSET,
        "temperature": temperature,
        "tta_mode": cfg.eval.tta_mode if tta else None,
        "parity": record,
        "seconds": round(time.perf_counter() - t0, 1),
    }
