"""Shared fixtures: the real data file and a helper that runs the CLI in a real subprocess."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

from cli_fork import needs_exec, run_forked

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_NPZ = SHARED_DATA / "bloodmnist_pbc_28.npz"
#: MD5 of the shared rebuilt file (not the official BloodMNIST MD5; see its README.md).
SHARED_NPZ_MD5 = "cccf4cafea45dc5e042c09e2d986c0f5"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its own share of the CPUs.

    Workers inherit nothing but this affinity, and every process they start (the CLI picks its
    thread count from the CPUs it may use) stays inside it: two workers never run 2-thread
    OpenMP regions on the same 2 cores, where spin-waiting threads slow each other several-fold.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker.startswith("gw") and 1 < count <= len(cpus):
        os.sched_setaffinity(0, cpus[int(worker[2:]) :: count])


# The slowest modules, slowest first (seconds of one xdist worker, measured with --durations).
# `make test` hands whole files to its 2 workers (--dist loadfile) in collection order
# (--no-loadscope-reorder), so starting the long ones first keeps one worker from being left
# alone with a long module at the end; modules not listed follow in their usual order.
SLOW_FIRST = (
    "test_faults.py",
    "test_study_compare.py",
    "test_tune.py",
    "test_distributed.py",
    "test_calibrated_inference.py",
    "test_serve.py",
    "test_compile.py",  # ~40 s where torch.compile's kernel cache is empty (CI), else ~8 s
    "test_export_tta.py",
    "test_cli_e2e.py",
    "test_sizes.py",
    "test_config.py",
    "test_export.py",
    "test_cli_fork.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the SLOW_FIRST modules' tests first, in that order (stable within a module)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/bloodmnist_pbc_28.npz; skips the test when it is absent."""
    if not SHARED_NPZ.is_file():
        pytest.skip(f"real data not found at {SHARED_NPZ} (see ../shared/data/README.md)")
    return SHARED_NPZ


def run_cli(
    args: list[str],
    cwd: str | Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m bloodmnist ARGS` in `cwd` and return the finished process (text output).

    `cwd` is required so that no default `runs/` folder lands in the repository. The process is
    forked from a server that has torch imported already (tests/cli_fork.py), unless `env`
    changes how an interpreter starts or `fresh` asks for a new interpreter (a test comparing
    two processes wants one that shares nothing with the other: hash seed, NumPy's global RNG).
    """
    full_env = {**os.environ, **(env or {})}
    if not fresh and not needs_exec(full_env):
        return run_forked(args, cwd, timeout, full_env)
    return subprocess.run(
        [sys.executable, "-m", "bloodmnist", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code and output tails, for assertion messages."""
    return (
        f"rc={result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n"
        f"--- stderr ---\n{result.stderr[-3000:]}"
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-blank lines a command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def load_bench(name: str) -> ModuleType:
    """benchmarks/NAME.py imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_header(width: int, height: int) -> bytes:
    """A PNG of that size with no pixel data: a header claiming a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
