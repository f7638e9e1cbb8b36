"""`bloodmnist serve`: a real uvicorn subprocess on 127.0.0.1, called over HTTP.

One tiny model is trained with the CLI (so the run folder has summary.json) and exported to
ONNX; the API must give `bloodmnist predict`'s answers for the 128 raw PBC JPEGs with both.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, PngImagePlugin

from conftest import SHARED_NPZ_MD5, describe, png_header, run_cli
from serve_helpers import PBC, pbc_files, post_files, server

FP32 = ["--device", "cpu", "--precision", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def run_dir(shared_data: Path, tmp_path_factory) -> Path:
    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    work = tmp_path_factory.mktemp("serve")
    train = ["train", "--recipe", "reference", "--data", str(shared_data), "--subset", "64"]
    train += ["--epochs", "1"]
    train += ["--set", "runtime.reports=false", "--set", "runtime.threads=1", "--precision"]
    train += ["fp32", "--pretrained", "none", "--out", str(work / "run"), "--quiet"]
    train += ["--set", "eval.compare_tta=false"]  # one TTA mode is all that is served
    result = run_cli(train, cwd=work)
    assert result.returncode == 0, describe(result)
    export = ["export", str(work / "run"), "--data", str(shared_data), "--parity-images", "64"]
    result = run_cli(export, cwd=work)
    assert result.returncode == 0, describe(result)
    return work / "run"


def cli_predictions(model: Path, tmp: Path, *options: str) -> list[dict]:
    out = tmp / f"{model.name}.json"
    result = run_cli(["predict", str(model), str(PBC), "--out", str(out), *options], cwd=tmp)
    assert result.returncode == 0, describe(result)
    return json.loads(out.read_text())["results"]


def served_predictions(url: str, chunk: int) -> list[dict]:
    paths = pbc_files()
    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(4) as pool:  # concurrent requests: the batcher mixes them
        answers = list(pool.map(lambda p: post_files(url, p)["results"], parts))
    return [row for rows in answers for row in rows]


def assert_same(served: list[dict], cli: list[dict]) -> None:
    assert len(served) == len(cli) == 128
    assert [r["file"] for r in served] == [Path(r["path"]).name for r in cli]
    assert {r["preprocess"] for r in served} == {"medmnist"}
    names = list(cli[0]["probs"])
    got = np.array([[r["probs"][n] for n in names] for r in served])
    ref = np.array([[r["probs"][n] for n in names] for r in cli])
    assert np.abs(got - ref).max() < 1e-5
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # a near-tie may flip on rounding; none here
    assert clear.sum() >= 120
    for s, c, ok in zip(served, cli, clear, strict=True):
        assert s["status"] == "ok" and (s["pred"] == c["pred"] or not ok)
        assert [n for n, _ in s["top_k"]][:1] == [s["pred"]]


def test_torch_server_matches_predict_model_info_and_batches(run_dir: Path, tmp_path) -> None:
    cli = cli_predictions(run_dir, tmp_path, *FP32)
    with server(run_dir, *FP32, log=tmp_path / "serve.log") as url:
        assert_same(served_predictions(url, 20), cli)
        info = requests.get(url + "/v1/model", timeout=10).json()
        summary = json.loads((run_dir / "summary.json").read_text())
        best = run_dir / "checkpoints" / "best.pt"
        assert info["classes"] == list(cli[0]["probs"]) and info["input_size"] == 28
        assert info["arch"] == "resnet18" and info["engine"] == "pytorch" and info["explain"]
        assert info["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
        training = info["training"]
        assert training["seed"] == 42 and training["data_md5"] == SHARED_NPZ_MD5
        assert training["test_acc"] == summary["test_acc"]
        # 24 single-image requests at once: the batcher answers them in fewer passes.
        before = requests.get(url + "/healthz", timeout=10).json()["forward_passes"]
        one = pbc_files()[:24]
        with ThreadPoolExecutor(24) as pool:
            rows = list(pool.map(lambda p: post_files(url, [p])["results"][0], one))
        passes = requests.get(url + "/healthz", timeout=10).json()["forward_passes"] - before
        assert [r["pred"] for r in rows] == [r["pred"] for r in cli[:24]]
        assert 1 <= passes < 24, passes
        # Grad-CAM for a requested class, and for the predicted one by default.
        body = post_files(url, one[:2], "/v1/explain", **{"class": "platelet"})
        for row in body["results"]:
            assert row["explain"]["class"] == "platelet"
            with Image.open(io.BytesIO(base64.b64decode(row["explain"]["overlay_png"]))) as img:
                assert img.size == (224, 224)
                pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
            assert len(np.unique(pixels, axis=0)) > 50
        row = post_files(url, one[:1], "/v1/explain")["results"][0]
        assert row["explain"]["class"] == row["pred"]
        for cls in ("dragon", "\u00b2"):  # a name, and a digit that int() refuses ('²')
            bad = requests.post(
                url + "/v1/explain",
                files=[("files", ("a.jpg", one[0].read_bytes()))],
                params={"class": cls},
                timeout=30,
            )
            assert bad.status_code == 422 and cls in bad.json()["detail"], bad.text
        tta = post_files(url, one[:2], tta="true")["results"]
        assert all(r["status"] == "ok" for r in tta)


TORCH_FREE = """
import sys, threading, time
import requests
from bloodmnist.cli.main import main
model, port, image = sys.argv[1:4]
args = ["serve", model, "--port", port, "--log-level", "warning"]
threading.Thread(target=main, args=(args,), daemon=True).start()
url = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        requests.get(url + "/healthz", timeout=1)
        break
    except requests.ConnectionError:
        time.sleep(0.1)
files = [("files", ("x.jpg", open(image, "rb").read(), "image/jpeg"))]
r = requests.post(url + "/v1/predict", files=files, timeout=60)
heavy = sorted(m for m in ("torch", "torchvision", "captum") if m in sys.modules)
print(r.status_code, r.json()["results"][0]["status"], heavy)
"""


def test_onnx_server_matches_predict_and_runs_without_torch(run_dir: Path, tmp_path) -> None:
    onnx = run_dir / "model.onnx"
    cli = cli_predictions(onnx, tmp_path)
    with server(onnx, log=tmp_path / "serve.log") as url:
        assert_same(served_predictions(url, 32), cli)
        info = requests.get(url + "/v1/model", timeout=10).json()
        assert info["engine"] == "onnx" and not info["explain"] and not info["tta"]
        assert info["training"]["seed"] == 42  # RUN/model.onnx finds RUN/summary.json
        one = [("files", ("a.jpg", pbc_files()[0].read_bytes(), "image/jpeg"))]
        for endpoint, params in (("/v1/explain", {}), ("/v1/predict", {"tta": "true"})):
            r = requests.post(url + endpoint, files=one, params=params, timeout=30)
            assert r.status_code == 422 and "ONNX" in r.json()["detail"], r.text
    from serve_helpers import free_port

    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(onnx), str(free_port()), str(pbc_files()[0])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout.strip().splitlines()[-1] == "200 ok []", proc.stdout + proc.stderr


def png_with_text(chars: int) -> bytes:
    """A valid 40x40 PNG carrying a zipped text chunk (XMP-like metadata) of `chars` characters:
    Pillow refuses to open one that inflates past its MAX_TEXT_CHUNK (1 MB)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("XML:com.adobe.xmp", "a" * chars, zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 120, 160)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 160)).save(buf, format="PNG")
    return buf.getvalue()


def test_limits_and_bad_input_get_their_status_and_the_server_keeps_answering(
    run_dir: Path, tmp_path
) -> None:
    limits = ["--max-files", "4", "--max-request-mb", "1", "--max-pixels", "2000000"]
    jpeg = pbc_files()[0].read_bytes()
    good = ("files", ("good.jpg", jpeg, "image/jpeg"))
    with server(run_dir / "model.onnx", *limits, log=tmp_path / "serve.log") as url:

        def post(files=None, **kw) -> requests.Response:
            return requests.post(url + "/v1/predict", files=files, timeout=30, **kw)

        cases = {
            "too many files": (post([good] * 5), 413, "limit is 4"),
            "body over 1 MB": (post([("files", ("big.bin", b"\0" * 1_100_000))]), 413, "byte"),
            "chunked body over 1 MB": (post(data=iter([b"x" * 65536] * 20)), 413, "byte"),
            "too many pixels": (
                post([("files", ("wide.png", png_bytes(2000, 1001), "image/png"))]),
                413,
                "wide.png",
            ),
            "header above Pillow's own limit": (
                post([("files", ("bomb.png", png_header(20000, 10000), "image/png"))]),
                413,
                "200.0 Mpx",
            ),
            "not an image type": (post([("files", ("a.txt", b"hi", "text/plain"))]), 415, "a.txt"),
            "JSON body": (post(json={"files": []}), 415, "multipart"),
            "no files": (post(files={"other": ("x", b"1")}), 422, "body files: Field required"),
            "top_k 9": (post([good], params={"top_k": 9}), 422, "top_k"),
            "top_k 0": (post([good], params={"top_k": 0}), 422, "query top_k: Input should be"),
            "top_k abc": (post([good], params={"top_k": "abc"}), 422, "query top_k: Input should"),
            "bad preprocess": (post([good], params={"preprocess": "zoom"}), 422, "query preproc"),
        }
        for name, (response, status, text) in cases.items():
            assert response.status_code == status, (name, response.status_code, response.text)
            detail = response.json()["detail"]  # one line, FastAPI's own 422s too (not a list)
            assert isinstance(detail, str) and "\n" not in detail, (name, response.text)
            assert text in detail, (name, response.text)
            assert requests.get(url + "/healthz", timeout=10).status_code == 200, name
        doc = requests.get(url + "/openapi.json", timeout=10).json()  # and says so
        said = doc["paths"]["/v1/predict"]["post"]["responses"]["422"]["content"]
        assert said["application/json"]["schema"]["properties"] == {"detail": {"type": "string"}}
        mixed = [
            good,
            ("files", ("garbage.jpg", b"not a jpeg at all", "image/jpeg")),
            ("files", ("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")),
            ("files", ("empty.png", b"", "image/png")),
        ]
        rows = post(mixed).json()["results"]
        assert [r["status"] for r in rows] == ["ok", "error", "error", "error"]
        assert "not an image" in rows[1]["error"] and "damaged" in rows[2]["error"]
        assert "empty" in rows[3]["error"]
        xmp = ("files", ("xmp.png", png_with_text(2_000_000), "image/png"))
        rows = post([good, xmp]).json()["results"]  # was a 500 for the whole request
        assert [r["status"] for r in rows] == ["ok", "error"]
        assert "cannot open (Decompressed data too large" in rows[1]["error"]
        assert requests.get(url + "/nowhere", timeout=10).status_code == 404
        page = requests.get(url + "/", timeout=10)
        assert (
            page.status_code == 200
            and "default-src 'self'" in page.headers["content-security-policy"]
        )
        for asset in ("app.js", "style.css"):
            assert requests.get(f"{url}/static/{asset}", timeout=10).status_code == 200


def test_time_and_connection_limits(run_dir: Path, tmp_path) -> None:
    good = ("files", ("good.jpg", pbc_files()[0].read_bytes(), "image/jpeg"))
    tight = ["--timeout", "0.001", "--max-connections", "3", "--max-files", "1000"]
    tight += ["--upload-timeout", "1"]
    with server(run_dir / "model.onnx", *tight, log=tmp_path / "t.log") as url:
        # past the form parser's own 1000 files, the limit's 413 (was Starlette's 400)
        many = [("files", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
        r = requests.post(url + "/v1/predict", files=many, timeout=30)
        assert r.status_code == 413 and "the limit is 1000" in r.json()["detail"], r.text
        r = requests.post(url + "/v1/predict", files=[good] * 8, timeout=30)
        assert r.status_code == 503 and "per-request limit" in r.json()["detail"], r.text
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        _a_stalled_upload_gets_408(url)
        _a_late_head_gets_408(url)
        # --max-connections: with 3 connections held open, a fourth gets 503 at once; the
        # silent ones are dropped once --upload-timeout (1 s) passes without a request head
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            assert requests.get(url + "/healthz", timeout=10).status_code == 503
            time.sleep(1.5)
            assert _status_soon(url, 200), "idle connections held the server past 1 s"
            assert all(sock.recv(4096).startswith(b"HTTP/1.1 408") for sock in held)
        finally:
            for sock in held:
                sock.close()


def _a_stalled_upload_gets_408(url: str) -> None:
    """A client that stops sending half-way through its body is answered 408 once
    --upload-timeout (1 s) has passed, instead of holding the connection for as long as it
    likes; the server answers again after it."""
    port = int(url.rsplit(":", 1)[1])
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        "boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n"
    )
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(4096):  # to the server's close (a timeout raises)
            answer += chunk
    waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"the request body did not arrive within 1 s; send it faster' in answer, answer
    assert b"connection: close" in answer.lower(), answer  # not held open by a trickling client
    assert 1.0 <= waited < 15, waited
    assert _status_soon(url, 200), "no answer after the stalled upload"


def _a_late_head_gets_408(url: str) -> None:
    """A head trickled a byte at a time is cut off at --upload-timeout (1 s): on a fresh
    connection, after a kept-alive request, and after a GET whose body came after its answer
    (uvicorn alone would wait forever in all three)."""
    port = int(url.rsplit(":", 1)[1])
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for first in (b"", head + b"\r\n", head + b"Content-Length: 3\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            if first:  # a whole request first: the deadline starts again after its answer
                sock.sendall(first)
                answer = b""
                while not answer.endswith(b"}"):  # the JSON body ends the answer
                    answer += sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                if b"Content-Length" in first:
                    sock.sendall(b"abc")  # the body the answer did not wait for
            t0, answer = time.monotonic(), b""
            for byte in head:  # never the blank line that ends the head
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # closed by the server: read its answer
                    break
                time.sleep(0.1)
                if answer := sock.recv(4096) if _readable(sock) else b"":
                    break
            while chunk := sock.recv(4096):
                answer += chunk
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408"), (first, answer)
        assert b"connection: close" in answer and b"head did not arrive in time" in answer
        # the clock starts at the connection, or at the answer (before the client read it)
        assert (0.3 if first else 0.9) <= waited < 3.5, (first, waited)


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _status_soon(url: str, status: int, tries: int = 50) -> bool:
    """True once GET /healthz answers `status` (the server notices closed sockets a moment
    later than the client closes them)."""
    for _ in range(tries):
        if requests.get(url + "/healthz", timeout=10).status_code == status:
            return True
        time.sleep(0.1)
    return False


def test_port_in_use_is_one_clear_error(run_dir: Path, tmp_path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = run_cli(["serve", str(run_dir / "model.onnx"), "--port", port], cwd=tmp_path)
    assert result.returncode == 2 and f"127.0.0.1:{port}" in result.stderr, describe(result)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    result = run_cli(["serve", str(run_dir / "model.onnx"), "--threads", "-1"], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert result.stderr.strip().splitlines()[-1].endswith("(0: all cores), got '-1'")


def test_serves_on_an_ipv6_host(run_dir: Path, tmp_path) -> None:
    """--host ::1 binds IPv6 as uvicorn does (the bind check used to try it as IPv4)."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server(run_dir / "model.onnx", log=tmp_path / "serve6.log", host="::1") as url:
        assert url.startswith("http://[::1]:")
        body = requests.get(url + "/v1/model", timeout=10).json()
        assert len(body["classes"]) == 8, body


def test_openapi_document_property_based_no_server_errors(run_dir: Path, tmp_path) -> None:
    """schemathesis generates requests from /openapi.json; none may get a 5xx (bounded run)."""
    schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
    from hypothesis import HealthCheck, given, settings

    seen: dict[str, set[int]] = {}
    with server(run_dir, *FP32, log=tmp_path / "serve.log") as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(
                max_examples=12,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests on every run
                suppress_health_check=list(HealthCheck),
            )
            def no_5xx(case) -> None:
                response = case.call(base_url=url, timeout=60)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, case.as_curl_command()

            no_5xx()
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
    assert set(seen) >= {"POST /v1/predict", "POST /v1/explain", "GET /v1/model", "GET /healthz"}
    assert 200 in seen["POST /v1/predict"] or 422 in seen["POST /v1/predict"], seen
