"""Download tests against a real HTTP server on 127.0.0.1 (no network mocks)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import types
from pathlib import Path

import pooch.core
import pytest

from bloodmnist.data import download as dl
from bloodmnist.errors import DataError, DownloadError
from httpserver import (
    OK,
    RESET,
    STALL,
    STATUS_503,
    TRUNCATE,
    WRONG,
    TestHTTPServer,
    closed_port_url,
)

PAYLOAD = b"PK\x03\x04fake-npz" + bytes(range(256)) * 64  # 16 KiB, npz-like header
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
NAME = dl.OFFICIAL_FILES[28][0]
PATH = f"/{NAME}"


@pytest.fixture
def server():
    with TestHTTPServer(stall_seconds=10) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fast_pooch_backoff(monkeypatch):
    """pooch sleeps 1 s, 2 s, ... between retries; record the waits instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(pooch.core, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


def fetch(server: TestHTTPServer, cache: Path, **kw) -> Path:
    kw.setdefault("retries", 2)
    kw.setdefault("timeout", 5.0)
    return dl.fetch_dataset(
        28, cache, base_url=server.base_url, progress=False, expected_md5=PAYLOAD_MD5, **kw
    )


def assert_empty(cache: Path) -> None:
    """No file at the final path and no temp leftovers."""
    assert not cache.exists() or list(cache.iterdir()) == []


def test_urls_and_official_md5(tmp_path):
    assert dl.dataset_url(64) == (
        "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    )
    assert dl.dataset_url(28, "http://m/x/") == "http://m/x/bloodmnist.npz?download=1"
    assert dl.official_md5(224) == "b718ff6835fcbdb22ba9eacccd7b2601"
    with pytest.raises(DataError, match="32"):
        dl.official_md5(32)
    f = tmp_path / "a.npz"
    f.write_bytes(PAYLOAD)
    assert dl.file_md5(f, chunk=1000) == PAYLOAD_MD5
    info = dl.verify_file(f, 28)
    assert info == {
        "path": str(f),
        "md5": PAYLOAD_MD5,
        "expected_md5": dl.OFFICIAL_FILES[28][1],
        "official": False,
    }
    with pytest.raises(DataError):
        dl.verify_file(tmp_path / "missing.npz")


def test_success_then_cached(server, tmp_path):
    server.serve(PATH, PAYLOAD)
    path = fetch(server, tmp_path)
    assert path == tmp_path / NAME
    assert path.read_bytes() == PAYLOAD
    assert dl.file_md5(path) == PAYLOAD_MD5
    assert fetch(server, tmp_path) == path
    assert server.counts[PATH] == 1  # second call used the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not pooch's temp-file 0600


def test_hash_mismatch_leaves_nothing(server, tmp_path, fast_pooch_backoff):
    server.serve(PATH, PAYLOAD, [WRONG])
    with pytest.raises(DownloadError) as err:
        fetch(server, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and PAYLOAD_MD5 in msg and server.url(PATH) in msg
    assert hashlib.md5(bytes(b ^ 0xFF for b in PAYLOAD)).hexdigest() in msg
    assert server.counts[PATH] == 3  # pooch retries hash mismatches too
    assert fast_pooch_backoff == [1, 2]
    assert_empty(tmp_path)


def test_503_then_success(server, tmp_path):
    server.serve(PATH, PAYLOAD, [STATUS_503, STATUS_503, OK])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.counts[PATH] == 3


@pytest.mark.parametrize("failure", [TRUNCATE, RESET])
def test_broken_body_once_then_success(server, tmp_path, failure):
    server.serve(PATH, PAYLOAD, [failure, OK])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.counts[PATH] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


@pytest.mark.parametrize("failure", [TRUNCATE, RESET, STATUS_503])
def test_broken_always_fails_clean(server, tmp_path, failure):
    server.serve(PATH, PAYLOAD, [failure])
    with pytest.raises(DownloadError):
        fetch(server, tmp_path)
    assert server.counts[PATH] == 3
    assert_empty(tmp_path)


def test_corrupt_cache_is_replaced(server, tmp_path, caplog):
    (tmp_path / NAME).write_bytes(b"stale")
    server.serve(PATH, PAYLOAD)
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        path = fetch(server, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.counts[PATH] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path / NAME) in warnings[0]


def test_corrupt_cache_removed_even_if_download_fails(server, tmp_path):
    (tmp_path / NAME).write_bytes(b"stale")
    server.serve(PATH, PAYLOAD, [STATUS_503])
    with pytest.raises(DownloadError):
        fetch(server, tmp_path, retries=0)
    assert_empty(tmp_path)


def test_unreachable_message(tmp_path):
    base = closed_port_url("/mirror")
    with pytest.raises(DownloadError) as err:
        dl.fetch_dataset(64, tmp_path, base_url=base, retries=1, timeout=2, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert dl.dataset_url(64, base) in msg
    assert dl.official_md5(64) in msg
    assert str(tmp_path / "bloodmnist_64.npz") in msg and "--data" in msg
    assert_empty(tmp_path)


@pytest.mark.parametrize("base", ["nonsense", "ftp://127.0.0.1/mirror", "http://[::1/mirror"])
def test_a_url_that_is_not_http_is_said_so_at_once(tmp_path, base, fast_pooch_backoff):
    """requests' URL errors are ValueErrors too: not to be taken for (and retried as) a hash
    mismatch."""
    with pytest.raises(DownloadError) as err:
        dl.fetch_dataset(28, tmp_path, base_url=base, retries=3, timeout=2, progress=False)
    msg = str(err.value)
    assert "not a usable http(s) URL" in msg and "mismatch" not in msg and "\n" not in msg
    assert "attempt" not in msg  # one try: another would not change the answer
    assert_empty(tmp_path)


def test_stalled_server_times_out(server, tmp_path):
    server.serve(PATH, PAYLOAD, [STALL])
    start = time.monotonic()
    with pytest.raises(DownloadError):
        fetch(server, tmp_path, retries=1, timeout=0.5)
    assert time.monotonic() - start < 5
    assert server.counts[PATH] == 2
    assert_empty(tmp_path)


# --- pretrained weights ---------------------------------------------------------------------

WEIGHTS = b"fake torch weights" * 500
SHA = hashlib.sha256(WEIGHTS).hexdigest()


def pretrained(url: str, cache: Path, **kw) -> Path:
    """The weights go through the same pooch path as the dataset (its back-off is recorded)."""
    kw.setdefault("retries", 2)
    return dl.download_pretrained(url, cache, progress=False, **kw)


def test_pretrained_success_and_cache(server, tmp_path, fast_pooch_backoff):
    url = server.serve(f"/models/resnet18-{SHA[:8]}.pth", WEIGHTS, [STATUS_503, OK])
    path = pretrained(url, tmp_path)
    assert fast_pooch_backoff == [1]  # pooch's retry, as for the dataset
    assert path == tmp_path / f"resnet18-{SHA[:8]}.pth"
    assert path.read_bytes() == WEIGHTS
    assert server.counts[f"/models/resnet18-{SHA[:8]}.pth"] == 2
    assert pretrained(url, tmp_path) == path
    assert server.counts[f"/models/resnet18-{SHA[:8]}.pth"] == 2  # no request for a valid cache
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_pretrained_wrong_prefix(server, tmp_path):
    url = server.serve("/models/resnet18-deadbeef.pth", WEIGHTS)
    with pytest.raises(DownloadError) as err:
        pretrained(url, tmp_path, retries=1)
    msg = str(err.value)
    assert "\n" not in msg and url in msg and str(tmp_path / "resnet18-deadbeef.pth") in msg
    assert server.counts["/models/resnet18-deadbeef.pth"] == 2
    assert_empty(tmp_path)


@pytest.mark.parametrize("failure", [TRUNCATE, RESET])
def test_pretrained_broken_body(server, tmp_path, failure):
    path = f"/w/net-{SHA[:10]}.pth"
    url = server.serve(path, WEIGHTS, [failure, OK])
    assert pretrained(url, tmp_path).read_bytes() == WEIGHTS
    assert server.counts[path] == 2
    server.serve(path, WEIGHTS, [failure])
    with pytest.raises(DownloadError):
        pretrained(url, tmp_path / "other")
    assert_empty(tmp_path / "other")


def test_pretrained_corrupt_cache_and_404(server, tmp_path, caplog):
    name = f"net-{SHA[:8]}.pth"
    (tmp_path / name).write_bytes(b"junk")
    url = server.serve(f"/{name}", WEIGHTS)
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        assert pretrained(url, tmp_path).read_bytes() == WEIGHTS
    assert any("sha256" in r.getMessage().lower() for r in caplog.records)
    with pytest.raises(DownloadError):
        pretrained(server.url(f"/missing-{SHA[:8]}.pth"), tmp_path / "m")
    assert server.counts[f"/missing-{SHA[:8]}.pth"] == 1  # a 404 is not retried


def test_pretrained_stall_and_unreachable(server, tmp_path):
    url = server.serve(f"/s-{SHA[:8]}.pth", WEIGHTS, [STALL])
    start = time.monotonic()
    with pytest.raises(DownloadError):
        pretrained(url, tmp_path, retries=1, timeout=0.5)
    assert time.monotonic() - start < 5
    assert_empty(tmp_path)
    gone = closed_port_url(f"/r-{SHA[:8]}.pth")
    with pytest.raises(DownloadError, match="save it as"):
        pretrained(gone, tmp_path)
    with pytest.raises(DownloadError, match="sha256 prefix"):
        pretrained(server.url("/noprefix.pth"), tmp_path)
