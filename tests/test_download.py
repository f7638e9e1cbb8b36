"""Download tests against a real HTTP server on 127.0.0.1 (no network mocks)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pooch.core
import pytest

from bloodmnist.data import download as dl
from bloodmnist.data.resumable import CHUNK
from bloodmnist.errors import DataError, DownloadError
from httpserver import (
    BAD_RANGE,
    GZIP,
    OK,
    RESET,
    STALL,
    STATUS_503,
    TRUNCATE,
    WRONG,
    TestHTTPServer,
    closed_port_url,
)

# 1 MiB, npz-like header: several of the downloader's 64-KiB chunks, so a broken attempt keeps
# what it got up to its last whole chunk (urllib3 drops a chunk cut short)
PAYLOAD = b"PK\x03\x04fake-npz" + bytes(range(256)) * 4096
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


def near(resumed_at: int, sent: int) -> bool:
    """Resumed where the broken attempt's bytes ended, up to the chunk it was cut in."""
    return sent - CHUNK < resumed_at <= sent


def kept_part(cache: Path, name: str = NAME, payload: bytes = PAYLOAD) -> int:
    """The cache holds nothing but the part file, a true prefix of the payload, and the version
    (ETag) its bytes came from; the part's length."""
    assert sorted(p.name for p in cache.iterdir()) == [f"{name}.part", f"{name}.part.version"]
    etag = f'"{hashlib.md5(payload).hexdigest()[:16]}"'  # the test server's
    assert (cache / f"{name}.part.version").read_text() == etag + "\n"
    kept = (cache / f"{name}.part").read_bytes()
    assert 0 < len(kept) < len(payload) and payload.startswith(kept)
    return len(kept)


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
    with open(tmp_path / ".download.lock", "a") as fh:  # another download in this folder
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        # a verified file is used without the lock (or any write: a read-only cache works)
        assert fetch(server, tmp_path) == path
    (tmp_path / ".download.lock").unlink()
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


def test_broken_body_once_then_resumed(server, tmp_path):
    """The retry asks only for the bytes the first attempt did not get (HTTP Range)."""
    server.serve(PATH, PAYLOAD, [TRUNCATE, OK])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    first, second = server.range_starts[PATH]
    assert first == 0 and near(second, len(PAYLOAD) // 2)
    # the resume names the version its bytes came from (the first answer's ETag)
    assert server.if_ranges[PATH] == [None, f'"{PAYLOAD_MD5[:16]}"']
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_reset_once_then_resumed(server, tmp_path):
    server.serve(PATH, PAYLOAD, [RESET, OK])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    first, second = server.range_starts[PATH]  # an RST may drop bytes in flight: <= half
    assert first == 0 and 0 <= second <= len(PAYLOAD) // 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_broken_always_keeps_the_bytes_for_the_next_download(server, tmp_path):
    """Each truncated attempt adds about half of what is left; the error says what is kept,
    and the next call (another run) finishes from there."""
    server.serve(PATH, PAYLOAD, [TRUNCATE])
    with pytest.raises(DownloadError) as err:
        fetch(server, tmp_path)
    starts = server.range_starts[PATH]
    assert len(starts) == 3 and starts[0] == 0
    for before, after in zip(starts, starts[1:], strict=False):
        assert near(after, before + (len(PAYLOAD) - before) // 2)
    kept = kept_part(tmp_path)
    assert near(kept, starts[2] + (len(PAYLOAD) - starts[2]) // 2)
    msg = str(err.value)
    assert "\n" not in msg and f"MB kept in {tmp_path / NAME}.part" in msg and "resumes" in msg
    server.serve(PATH, PAYLOAD, [OK])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.range_starts[PATH][3:] == [kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_always_503_leaves_nothing(server, tmp_path):
    server.serve(PATH, PAYLOAD, [STATUS_503])
    with pytest.raises(DownloadError) as err:
        fetch(server, tmp_path)
    assert server.counts[PATH] == 3 and "kept in" not in str(err.value)
    assert_empty(tmp_path)  # no empty part file either


def test_server_without_ranges_restarts_the_part(server, tmp_path):
    """A server that ignores Range sends the whole file (200): the part restarts from zero."""
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:1000])
    server.serve(PATH, PAYLOAD)
    server.honour_ranges = False
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.counts[PATH] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_range_answered_with_other_bytes_restarts(server, tmp_path, fast_pooch_backoff):
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:1000])
    server.serve(PATH, PAYLOAD, [BAD_RANGE, OK])  # 206 with "bytes 0-" for "bytes=1000-"
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.range_starts[PATH] == [1000, 0] and fast_pooch_backoff == [1]


@pytest.mark.parametrize("kept", ["whole", "longer"])
def test_a_part_at_or_past_the_end_is_checked(server, tmp_path, kept):
    """A whole part (killed between its fsync and the rename) is used as it is (416: nothing
    left to send); a longer one fails the hash, is deleted and downloaded again."""
    part = tmp_path / f"{NAME}.part"
    part.write_bytes(PAYLOAD if kept == "whole" else PAYLOAD + b"tail")
    server.serve(PATH, PAYLOAD)
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    n = len(PAYLOAD)
    assert server.range_starts[PATH] == ([n] if kept == "whole" else [n + 4, 0])
    assert not part.exists()


def test_a_stale_part_fails_the_hash_and_is_replaced(server, tmp_path):
    """A part of an older version of the remote file: resumed, wrong, deleted, fetched again."""
    (tmp_path / f"{NAME}.part").write_bytes(b"older version" * 10)
    server.serve(PATH, PAYLOAD)
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.range_starts[PATH] == [130, 0]


def test_a_part_of_a_changed_remote_file_restarts_at_once(server, tmp_path, caplog):
    """The part's version (the ETag of the answer it began with) goes along as If-Range: once
    the remote file has changed, the server sends all of the new one (200) in that request,
    instead of its rest being appended to the old bytes, failing the hash and fetched again."""
    old = bytes(b ^ 0x5A for b in PAYLOAD)
    server.serve(PATH, old, [TRUNCATE])
    with pytest.raises(DownloadError):
        fetch(server, tmp_path, retries=0)
    kept_part(tmp_path, payload=old)
    old_version = (tmp_path / f"{NAME}.part.version").read_text().strip()
    server.serve(PATH, PAYLOAD)  # the remote file changes
    with caplog.at_level(logging.INFO):
        assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.if_ranges[PATH] == [None, old_version]
    assert server.range_starts[PATH] == [0, 0]  # one request for the new file, whole
    assert "the remote file changed since" in caplog.text
    # a server that ignores Range (200) with an unchanged file is not said to have changed it
    caplog.clear()
    (tmp_path / NAME).unlink()
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:1000])
    (tmp_path / f"{NAME}.part.version").write_text(f'"{PAYLOAD_MD5[:16]}"\n')
    server.honour_ranges = False
    with caplog.at_level(logging.INFO):
        assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert "the server does not resume downloads" in caplog.text
    assert "the remote file changed" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_the_version_is_a_strong_etag_else_the_date() -> None:
    from bloodmnist.data.resumable import _validator

    date = "Wed, 02 Dec 2026 10:00:00 GMT"
    assert _validator({"ETag": '"abc"', "Last-Modified": date}) == '"abc"'
    assert _validator({"ETag": 'W/"abc"', "Last-Modified": date}) == date  # weak: not for If-Range
    assert _validator({"ETag": 'W/"abc"'}) == "" and _validator({}) == ""


def test_an_encoded_answer_to_a_range_restarts_the_part(server, tmp_path):
    """The part holds the file's own bytes (asked for with Accept-Encoding: identity); a
    server that gzips anyway counts a Range in gzip bytes, so such a 206 is not appended to
    the part: the download starts again, and requests decodes the whole gzip answer."""
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:1000])
    server.serve(PATH, PAYLOAD, [GZIP])
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.range_starts[PATH] == [1000, 0]
    assert server.accept_encodings[PATH] == ["identity", "identity"]


def test_a_bad_range_on_the_last_attempt_leaves_no_empty_part(server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:1000])
    server.serve(PATH, PAYLOAD, [BAD_RANGE])
    with pytest.raises(DownloadError, match="asked for bytes from 1000, the server sent bytes 0-"):
        fetch(server, tmp_path, retries=0)
    assert_empty(tmp_path)


def test_a_refused_range_says_so(server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD + b"tail")  # longer than the file: 416
    server.serve(PATH, PAYLOAD)
    with pytest.raises(DownloadError, match="the server refused to resume at 1.0 MB; the part"):
        fetch(server, tmp_path, retries=0)
    assert_empty(tmp_path)


def test_a_second_download_waits_for_the_first_and_uses_its_file(server, tmp_path, caplog):
    """Parallel processes on an empty cache (a study's jobs): the second waits on the cache's
    lock while the first downloads, then finds the verified file and asks the server nothing."""
    server.serve(PATH, PAYLOAD)
    lock = tmp_path / ".download.lock"
    result: list[Path] = []
    with open(lock, "a") as fh:  # as another process's download holds it
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO):
            waiter = threading.Thread(target=lambda: result.append(fetch(server, tmp_path)))
            waiter.start()
            deadline = time.monotonic() + 30
            while "waiting for another process" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert waiter.is_alive() and not result
            (tmp_path / NAME).write_bytes(PAYLOAD)  # what the first one leaves
            lock.unlink()  # how it releases: unlink, then unlock
    waiter.join(timeout=30)
    assert result == [tmp_path / NAME] and server.counts[PATH] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_a_killed_download_resumes_in_the_next_process(server, tmp_path):
    """SIGKILL mid-download (a real process, stalled after half the file): the next process
    asks for the rest only."""
    server.serve(PATH, PAYLOAD, [STALL, OK])
    code = (
        "from bloodmnist.data.download import fetch_dataset; "
        f"fetch_dataset(28, {str(tmp_path)!r}, base_url={server.base_url!r}, retries=0, "
        f"timeout=30, progress=False, expected_md5={PAYLOAD_MD5!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    part = tmp_path / f"{NAME}.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and near(part.stat().st_size, len(PAYLOAD) // 2)):
        assert proc.poll() is None and time.monotonic() < deadline, "no bytes arrived"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    # pooch's own temporary file of the killed process stays, empty (the bytes are in the
    # part), and so does the cache's lock file (the kernel dropped its lock with the process)
    (leftover,) = (p for p in tmp_path.iterdir() if p.name.startswith("tmp"))
    assert leftover.stat().st_size == 0
    leftover.unlink()
    (tmp_path / ".download.lock").rename(tmp_path.parent / f"{tmp_path.name}.lock")
    kept = kept_part(tmp_path)
    (tmp_path.parent / f"{tmp_path.name}.lock").rename(tmp_path / ".download.lock")
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert server.range_starts[PATH] == [0, kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # the lock file gone too


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
    first, second = server.range_starts[PATH]
    assert first == 0 and near(second, len(PAYLOAD) // 2)  # the retry resumed
    assert near(kept_part(tmp_path), second + (len(PAYLOAD) - second) // 2)


# --- pretrained weights ---------------------------------------------------------------------

WEIGHTS = b"fake torch weights" * 60_000  # 1 MB: several chunks
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
    half, resumed_at = len(WEIGHTS) // 2, server.range_starts[path][1]
    assert near(resumed_at, half) if failure == TRUNCATE else resumed_at <= half  # RST: maybe less
    server.serve(path, WEIGHTS, [failure])
    with pytest.raises(DownloadError):
        pretrained(url, tmp_path / "other")
    if failure == TRUNCATE:
        kept_part(tmp_path / "other", f"net-{SHA[:10]}.pth", WEIGHTS)


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
    kept_part(tmp_path, f"s-{SHA[:8]}.pth", WEIGHTS)
    (tmp_path / f"s-{SHA[:8]}.pth.part").unlink()
    gone = closed_port_url(f"/r-{SHA[:8]}.pth")
    with pytest.raises(DownloadError, match="save it as"):
        pretrained(gone, tmp_path)
    with pytest.raises(DownloadError, match="sha256 prefix"):
        pretrained(server.url("/noprefix.pth"), tmp_path)
