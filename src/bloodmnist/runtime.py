"""Device, precision, threads, seeding, distributed setup and environment: decided here, once.

Nothing else in the package reads environment variables; callers receive a `Runtime` (or the
paths from `home_dir()` / `mirror_url()`) and pass what they need down.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

# Backstop for a rank that waits on a peer which died or hangs: collectives fail after this long
# instead of never. Generous, because rank 0 may download data or weights while the others wait
# (torchrun itself stops the other workers as soon as one exits with an error).
DIST_TIMEOUT = dt.timedelta(minutes=30)


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved, never "auto")
    channels_last: bool
    threads: int
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # gloo | nccl under torchrun

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The one autocast helper: bf16/fp16 where chosen, a no-op for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's loss scaling (None otherwise): fp16 gradients below 6e-8 round to zero, so
        the loss is multiplied up before backward and the gradients divided back before the
        step, which is skipped (and the scale lowered) when they overflow. bf16 has fp32's range
        and needs none. A skipped step still advances the per-step LR schedule (as in torch's
        AMP recipes), so torch's warning about a scheduler step before an optimiser step, which
        a skipped first step triggers, is silenced here."""
        if self.precision != "fp16":
            return None
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
        return torch.amp.GradScaler(self.device.type)

    def describe(self) -> str:
        extra = f", rank {self.rank}/{self.world_size} ({self.backend})" if self.distributed else ""
        return (
            f"device={self.device} precision={self.precision} "
            f"channels_last={self.channels_last} threads={self.threads}{extra}"
        )


def home_dir() -> Path:
    """Cache folder for datasets: $BLOODMNIST_HOME or ~/.cache/bloodmnist."""
    return Path(os.environ.get("BLOODMNIST_HOME", "~/.cache/bloodmnist")).expanduser()


def mirror_url() -> str | None:
    """Base URL of a BloodMNIST mirror ($BLOODMNIST_URL), or None for the official Zenodo record."""
    return os.environ.get("BLOODMNIST_URL") or None


def has_cxx_compiler() -> bool:
    """Whether torch.compile's CPU backend (inductor, which reads $CXX first) finds a C++
    compiler to build its kernels with."""
    names = (os.environ.get("CXX"), "g++", "clang++", "c++")
    return any(shutil.which(n) for n in names if n)


def weights_dir() -> Path:
    """Where pretrained weights are cached: torch hub's checkpoints folder (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 autocast beats fp32.

    On AVX2-only CPUs oneDNN emulates bf16 and is about 10x slower than fp32 (measured), so
    `auto` must not choose it there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16", " amx_tile"))


def _resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from bloodmnist.errors import BloodMNISTError

            raise BloodMNISTError("--device cuda was requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


#: What a process is for: "train" (speed first) or "inference" (predict, evaluate: the same
#: numbers on every machine first).
PURPOSES = ("train", "inference")


def resolve_precision(requested: str, device: torch.device, purpose: str = "train") -> str:
    """The precision `auto` means for `purpose` on `device`; explicit requests are kept.

    Training: bf16 on CPUs with AVX512-BF16/AMX (about 2x the fp32 speed there), CUDA AMP on GPUs,
    fp32 otherwise. Inference on CPU: fp32, so a prediction does not depend on which CPU it ran
    on (bf16 moves probabilities by up to ~1e-2, enough to flip near-ties). Inference on CUDA
    keeps mixed precision: a GPU is chosen for throughput, and the result does not hinge on
    which CPU flags the host happens to have.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if purpose == "inference":
        return "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def _dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun; (0, 0, 1) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def inference_device(requested: str | None, trained_on: str) -> str:
    """Where a saved model runs: --device if given; a run trained on the CPU stays there; any
    other (a GPU run) goes to the best device here, so its file still predicts without a GPU."""
    return requested or ("cpu" if trained_on == "cpu" else "auto")


def setup_runtime(
    device: str = "auto", precision: str = "auto", threads: int = 0, purpose: str = "train"
) -> Runtime:
    """Decide device, precision, threads and the process group for this process.

    `purpose` ("train" or "inference") only changes what precision `auto` means (see
    `resolve_precision`): commands say what they are for instead of special-casing precision.
    """
    rank, local_rank, world_size = _dist_env()
    dev = _resolve_device(device, local_rank)
    prec = resolve_precision(precision, dev, purpose)
    if dev.type == "cpu":
        n = threads or max(1, len(os.sched_getaffinity(0)) // max(1, _local_world(world_size)))
        torch.set_num_threads(n)
    else:
        # cuBLAS is deterministic only with a fixed workspace, set before its first handle is
        # made (torch's reproducibility notes); a user's own setting wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(dev)
        n = torch.get_num_threads()
    backend = None
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT)
    # channels_last pays off on CUDA and on CPU (oneDNN), fp32 and bf16 alike (measured).
    return Runtime(dev, prec, True, n, rank, local_rank, world_size, backend)


def _local_world(world_size: int) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; make kernels deterministic where torch can."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def host_info(rt: Runtime) -> dict[str, object]:
    """CPU/GPU description for the manifest."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": rt.threads,
        "gpu": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
    }
    return info


def broadcast_object(rt: Runtime, obj: T) -> T:
    """Rank 0's `obj` on every rank (picklable objects; a no-op for one process)."""
    if not rt.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(rt: Runtime, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not rt.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(rt: Runtime, fn: Callable[[], T], share: bool = True) -> T | None:
    """Run `fn` on rank 0 only; every rank gets its result (`share`) or raises its error.

    Without this, an error on rank 0 (run folder not empty, lock held, bad checkpoint) would
    leave the other ranks waiting in their next collective until the timeout.
    """
    from bloodmnist.errors import BloodMNISTError

    if not rt.distributed:
        return fn()
    result, failure = None, None
    if rt.is_main:
        try:
            result = fn()
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, BloodMNISTError) else 1
            broadcast_object(rt, (str(exc) or type(exc).__name__, code))
            raise
    failure = broadcast_object(rt, failure)
    if failure is not None:  # only reached on ranks > 0: rank 0 re-raised its own error
        err = BloodMNISTError(f"{failure[0]} (reported by rank 0)")
        err.exit_code = failure[1]
        raise err
    return broadcast_object(rt, result) if share else result


def main_first(rt: Runtime, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the other ranks (caches: one download, not world_size)."""
    result = from_main(rt, fn, share=False)
    return result if rt.is_main else fn()  # type: ignore[return-value]


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """optim.batch_size is the global batch; each of the world_size ranks takes an equal share."""
    if batch_size % world_size:
        from bloodmnist.errors import BloodMNISTError

        raise BloodMNISTError(
            f"optim.batch_size={batch_size} (the global batch) is not divisible by the "
            f"{world_size} processes; use a multiple of {world_size}, e.g. "
            f"--set optim.batch_size={max(1, round(batch_size / world_size)) * world_size}"
        )
    return batch_size // world_size


def sync_buffers(model: torch.nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats).

    Without SyncBatchNorm each rank's running stats follow its own batches; DDP re-broadcasts
    rank 0's before the next training step anyway. Doing it before validation means every shard
    is predicted by the same model: the one rank 0 checkpoints.
    """
    if rt.distributed:
        import torch.distributed as dist

        for buf in getattr(model, "module", model).buffers():  # under DDP: the wrapped model
            dist.broadcast(buf, src=0)


def cleanup(rt: Runtime) -> None:
    if rt.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
