"""Load test of `bloodmnist serve` on loopback: C concurrent clients x R requests each.

Starts the server in a subprocess (127.0.0.1, free port), then every client posts one raw PBC
JPEG per request (cycling through ../shared/data/pbc_sample) to /v1/predict and records the
latency. Reports throughput, p50/p95/p99 latency, failed requests (non-200 or a non-ok row) and
the forward passes the server ran (requests per pass shows the micro-batching at work).

    .venv/bin/python benchmarks/serve_load.py RUN_DIR/model.onnx --clients 8 --requests 200 \
        --json /tmp/serve_load.json
    .venv/bin/python benchmarks/serve_load.py RUN_DIR --server-args="--precision fp32"

Clients and server share the machine's cores: on a small CPU the numbers include the clients'
own cost, as any loopback test does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

PBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc_sample"


def cpu_info() -> dict:
    model, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": [f for f in wanted if f in flags],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "bloodmnist", "serve", model, "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning", *extra])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("server did not start within 60 s")


def client(url: str, files: list[tuple[str, bytes]], n: int, offset: int, out: list) -> None:
    session = requests.Session()
    for i in range(n):
        name, data = files[(offset + i) % len(files)]
        t0 = time.perf_counter()
        try:
            r = session.post(url + "/v1/predict", files=[("files", (name, data, "image/jpeg"))])
            ok = r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
        except requests.RequestException:
            ok = False
        out.append((time.perf_counter() - t0, ok))


def run(args: argparse.Namespace) -> dict:
    files = [(p.name, p.read_bytes()) for p in sorted(PBC.rglob("*.jpg"))]
    proc, url = start_server(args.model, shlex.split(args.server_args))
    try:
        for name, data in files[:16]:  # warm-up: first passes allocate and tune kernels
            requests.post(url + "/v1/predict", files=[("files", (name, data, "image/jpeg"))])
        passes0 = requests.get(url + "/healthz").json()["forward_passes"]
        server_cpu0, client_cpu0 = cpu_seconds(proc.pid), time.process_time()
        results: list[list] = [[] for _ in range(args.clients)]
        threads = [
            threading.Thread(target=client, args=(url, files, args.requests, 17 * c, results[c]))
            for c in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(proc.pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        passes = requests.get(url + "/healthz").json()["forward_passes"] - passes0
        engine = requests.get(url + "/v1/model").json()["engine"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array([r[0] for rows in results for r in rows]) * 1000
    failed = sum(not r[1] for rows in results for r in rows)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        **cpu_info(),
        "load_average_1m_before": args.load_before,
        "engine": engine,
        "clients": args.clients,
        "requests": len(lat),
        "failed": failed,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_ms": round(statistics.fmean(lat), 1),
        "forward_passes": passes,
        "images_per_pass": round(len(lat) / max(passes, 1), 2),
        # CPU per request is what load on a shared machine changes least: capacity estimate.
        "server_cpu_ms_per_request": round(server_cpu * 1000 / len(lat), 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / len(lat), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder, .pt or .onnx")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="per client")
    p.add_argument("--server-args", default="", help='e.g. "--precision fp32 --threads 2"')
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    args.load_before = os.getloadavg()[0]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if result["failed"]:
        raise SystemExit(f"{result['failed']} requests failed")


if __name__ == "__main__":
    main()
