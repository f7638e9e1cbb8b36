"""Bodies of `bloodmnist serve` and `bloodmnist explain`.

`serve` with an .onnx model imports neither torch nor captum: the ONNX engine and the API need
only onnxruntime, NumPy, Pillow and the web stack.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from bloodmnist.cli.console import say
from bloodmnist.inference.inputs import InferenceError, expand_inputs

if TYPE_CHECKING:  # the engines module is imported lazily, by the serve and explain commands
    from bloodmnist.inference.engines import ModelInfo


def _check_serve_args(args: argparse.Namespace) -> None:
    for name in ("workers", "max_batch", "max_files", "max_pixels", "max_connections"):
        if getattr(args, name) < 1:
            raise InferenceError(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.max_request_mb, args.timeout, args.upload_timeout) <= 0:
        raise InferenceError("--max-request-mb, --timeout and --upload-timeout must be > 0")
    if not 1 <= args.port <= 65535:
        raise InferenceError(f"--port {args.port}: choose a port between 1 and 65535")
    try:  # uvicorn would only log a bind failure; say it here, in one line, before loading
        # uvicorn's own rule: a host with a colon (::, ::1) is IPv6
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.create_server((args.host, args.port), family=family):
            pass
    except OSError as exc:
        raise InferenceError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another "
            "--port or --host"
        ) from None


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bloodmnist.serving.app import ENV_SETTINGS, create_app
    from bloodmnist.serving.limits import Limits
    from bloodmnist.serving.model_service import ModelService
    from bloodmnist.serving.protocol import ENV_HEAD_TIMEOUT, HeadDeadlineProtocol

    _check_serve_args(args)
    limits = Limits(
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_files=args.max_files,
        max_pixels=args.max_pixels,
        timeout_s=args.timeout,
        upload_timeout_s=args.upload_timeout,
    )
    calibrated = not args.uncalibrated
    service = ModelService.open(args.model, args.device, args.precision, args.threads, calibrated)
    info = service.engine.info
    say(
        f"bloodmnist serve: {service.path} ({info.kind}, {service.arch}, {info.input_size} px"
        f"{_calibration_note(info)}) on http://{args.host}:{args.port}/ (API docs /docs, Ctrl-C "
        "stops)"
    )
    common = {"host": args.host, "port": args.port, "log_level": args.log_level}
    common["limit_concurrency"] = args.max_connections  # uvicorn answers 503 beyond it
    # the request head gets the body's deadline too (uvicorn itself times neither)
    os.environ[ENV_HEAD_TIMEOUT] = str(args.upload_timeout)
    common["http"] = HeadDeadlineProtocol
    if args.workers == 1:
        uvicorn.run(create_app(service, limits, args.max_batch), **common)
        return 0
    settings = {
        "model": str(service.path),
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "calibrated": calibrated,
        "limits": limits.describe(),
        "max_batch": args.max_batch,
    }
    os.environ[ENV_SETTINGS] = json.dumps(settings)
    del service  # each worker opens its own copy
    uvicorn.run("bloodmnist.serving.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def _calibration_note(info: ModelInfo) -> str:
    """', probabilities at T=0.49' where the model's temperature is applied, and the
    TTA mode inside an ONNX graph exported with --tta."""
    t = info.applied_temperature(False)
    baked = f", TTA inside ({info.tta_baked})" if info.tta_baked else ""
    return baked + (f", probabilities at T={t:.3g}" if t is not None else "")


def _out_names(paths: list[Path], out: Path) -> list[Path]:
    """DIR/<stem>_gradcam.png per input, made unique; refuses to overwrite existing files."""
    taken: set[str] = set()
    names = []
    for path in paths:
        base, n = f"{path.stem}_gradcam", 1
        name = f"{base}.png"
        while name in taken:
            n += 1
            name = f"{base}_{n}.png"
        taken.add(name)
        names.append(out / name)
    existing = [p for p in names if p.exists()]
    if existing:
        raise InferenceError(
            f"{existing[0]} already exists ({len(existing)} of the output files do); choose a new "
            "--out folder"
        )
    return names


def explain(args: argparse.Namespace) -> int:
    """Write original | heat map | overlay PNGs; exit 1 when any file could not be read or its
    output name was taken meanwhile (that file is kept)."""
    from bloodmnist.explain.run import explain_files

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InferenceError(f"--out {out} is a file; give a folder")
    paths = expand_inputs(args.inputs)
    targets = _out_names(paths, out)
    rows = explain_files(
        args.model, paths, targets, args.target_class, args.preprocess, args.device, args.precision
    )
    failed = [r for r in rows if r["status"] != "ok"]
    print(json.dumps(rows, indent=2))
    say(f"bloodmnist explain: {len(rows) - len(failed)} of {len(rows)} files explained -> {out}")
    for row in failed:
        say(f"bloodmnist explain: error: {row['file']}: {row['error']}")
    return 1 if failed else 0
