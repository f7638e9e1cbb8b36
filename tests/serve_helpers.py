"""Start `bloodmnist serve` in a real subprocess on 127.0.0.1 and talk to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from conftest import SHARED_DATA

PBC = SHARED_DATA / "pbc_sample"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pbc_files() -> list[Path]:
    """The 128 raw sample JPEGs, in `predict`'s order (sorted, recursive)."""
    return sorted(p for p in PBC.rglob("*.jpg"))


@contextmanager
def server(
    model: Path, *options: str, log: Path, timeout: float = 120, host: str = "127.0.0.1"
) -> Iterator[str]:
    """`bloodmnist serve MODEL OPTIONS` on a free port; yields its base URL, stops it after."""
    port = free_port(host)
    cmd = [sys.executable, "-m", "bloodmnist", "serve", str(model), "--port", str(port)]
    cmd += ["--host", host, "--log-level", "warning", *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited rc={proc.returncode}:\n{log.read_text()}")
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not up after {timeout} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post_files(url: str, paths: list[Path], endpoint: str = "/v1/predict", **params) -> dict:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    response = requests.post(url + endpoint, files=files, params=params, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def pbc_head_checkpoint(shared_data: Path, tmp_path_factory) -> Path:
    """A quickly fitted real checkpoint for tests that also need the raw PBC sample (skips when
    it is absent); test modules wrap it in a module-scoped fixture."""
    import pytest

    from test_predict import fit_head_checkpoint

    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    fit_head_checkpoint(shared_data, path)
    return path
