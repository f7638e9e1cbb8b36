"""pooch's HTTP downloader made resumable: bytes go to ``<target>.part``, which survives a failed
attempt (and a killed process), and the next attempt asks only for the rest with an HTTP Range
request. The BloodMNIST files reach 1.6 GB at 224 px; without this a connection that drops at 90%
starts again from zero, on every retry.

The part file is trusted only as far as the hash: a server that ignores Range (200) restarts it,
one that answers with another offset, or with an encoded (gzip) body whose byte offsets are not
the file's, restarts it, one that says the range cannot be satisfied (416) gets the part checked,
and a finished file whose hash does not match is deleted before the next attempt (it may hold
bytes of an older version of the remote file). Which version the part's bytes came from (the
server's strong ETag, else its Last-Modified) is kept in ``<target>.part.version`` and sent as
``If-Range``: a server whose file has changed since then sends the whole new file at once (200),
rather than the rest of the new one to be appended to the start of the old. Bytes are asked for
unencoded (`Accept-Encoding: identity`), so the part holds the file's own bytes. One download
per cache folder at a time: `cache_lock` (the caller holds it around the whole fetch, the cached
file's check included).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pooch
import requests
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema

log = logging.getLogger(__name__)

CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


def file_digest(path: str | Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so large npz files need little memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class NotRetried(Exception):
    """An HTTP answer that another attempt will not change (a 4xx other than 408 and 429; a
    416 to a Range request is not one: the part is checked instead).

    Neither a ValueError nor a requests error, so pooch's retry loop lets it through at once.
    """


class _RangeMismatch(requests.RequestException):
    """A 206 answer for other bytes than asked for, or a 416 for a part that is not the file:
    the part file is restarted, pooch retries."""


LOCK_NAME = ".download.lock"


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Hold a flock on ``folder/.download.lock`` (removed again on release): parallel processes
    (a study's or a search's jobs on an empty cache) wait for one download, then find the file
    in place, instead of appending to one part file. The part file itself is not locked: it
    is renamed away when done, and a lock on it would then guard the finished file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder)
    try:
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # before unlocking: a waiter then sees it was released
            os.close(fd)


def _acquire(path: Path, folder: Path) -> int | None:
    """The locked file's descriptor; None where the file system has no locks (unguarded)."""
    for _ in range(100):  # retried only when a releasing holder unlinked the file under us
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock_waiting(fd, folder)
        except OSError as exc:  # e.g. ENOLCK on a network file system without locks
            os.close(fd)
            log.warning("cannot lock %s (%s); downloading without a lock", path, exc)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise OSError(f"could not lock {path}")


def _flock_waiting(fd: int, folder: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("waiting for another process's download into %s", folder)
        fcntl.flock(fd, fcntl.LOCK_EX)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def kept_note(part: Path) -> str:
    """What a failed download leaves for the next one, or "" when it leaves nothing."""
    try:
        size = part.stat().st_size
    except OSError:
        return ""
    return f"; {_bytes_mb(size)} kept in {part}, the next download resumes there" if size else ""


def _bytes_mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


class ResumableDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that keeps its bytes in
    ``part`` between attempts, resumes with Range, checks the hash, fsyncs, and then moves the
    part file onto pooch's temporary output file (same folder), which pooch renames into place."""

    def __init__(
        self, part: Path, progress: bool, timeout: float, algorithm: str, expected: str
    ) -> None:
        self.part, self.progress, self.timeout = part, progress, timeout
        self.version = part.with_name(part.name + ".version")  # the remote file's ETag/date
        self.algorithm, self.expected = algorithm, expected
        self.refused = False  # the last attempt's Range was answered 416

    def __call__(self, url: str, output_file: str, pooch_obj: object) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "ab") as fh:  # created with the user's umask, as any file of theirs
            start = fh.seek(0, os.SEEK_END)
            if start:
                log.info("resuming the download at %s (%s)", _bytes_mb(start), self.part)
            try:
                self._get(url, fh, start, pooch_obj)
            except BaseException:
                if os.fstat(fh.fileno()).st_size == 0:  # nothing to resume from: no empty file
                    self._discard()
                raise
            fh.flush()
            os.fsync(fh.fileno())  # the renamed file survives a crash intact
            got = file_digest(self.part, self.algorithm)
            if not got.startswith(self.expected):
                self._discard()  # the next attempt starts from zero
                if self.refused:  # a 416 for a part that is not the file
                    raise _RangeMismatch(
                        f"the server refused to resume at {_bytes_mb(start)}; "
                        "the part was discarded"
                    )
                # a ValueError: pooch retries it (and reports the last one)
                raise ValueError(
                    f"{self.algorithm} hash mismatch: expected {self.expected}, got {got}"
                )
            os.replace(self.part, output_file)
            self.version.unlink(missing_ok=True)

    def _discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.version.unlink(missing_ok=True)

    def _get(self, url: str, fh: IO[bytes], start: int, pooch_obj: object) -> None:
        """Append the rest of the file to ``fh`` (all of it when the server ignores Range)."""
        self.refused = False
        # identity: the part must hold the file's bytes, which Range offsets count (a gzip
        # body would be decoded into the part, and a Range then counted in encoded bytes)
        headers = {"Accept-Encoding": "identity"}
        kwargs: dict[str, Any] = {"timeout": self.timeout, "headers": headers}
        if start:
            headers["Range"] = f"bytes={start}-"
            if version := self._read_version():
                headers["If-Range"] = version  # changed since: the server sends it all (200)
        kwargs["hooks"] = {"response": lambda response, **_: self._check_range(response, fh, start)}
        http = pooch.HTTPDownloader(progressbar=self.progress, chunk_size=CHUNK, **kwargs)
        try:
            http(url, fh, pooch_obj)
        except (MissingSchema, InvalidSchema, InvalidURL) as exc:  # ValueErrors: not a hash
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise NotRetried(f"not a usable http(s) URL: {text}") from exc
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 416 and start:  # nothing after `start`: the part is whole, or is not
                self.refused = True  # the file; the hash decides
                return
            if 400 <= code < 500 and code not in (408, 429):
                raise NotRetried(f"HTTP {code} {exc.response.reason}") from exc
            raise

    def _read_version(self) -> str:
        try:
            return self.version.read_text().strip()
        except OSError:  # none kept (a server without validators, or an older part)
            return ""

    def _check_range(self, response: requests.Response, fh: IO[bytes], start: int) -> None:
        """Called before the body is read: make the part file fit what the server sends."""
        headers = response.headers
        encoded = headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if response.status_code == 200:  # the whole file follows (new, changed or no Range)
            version = _validator(headers)
            if start:
                sent = response.request.headers.get("If-Range") if response.request else None
                if sent and sent != version:
                    log.info("the remote file changed since %s was started", self.part)
                else:  # no validator, or the same one: the server ignores Range
                    log.info("the server does not resume downloads")
                log.info("starting the download again from zero")
                fh.truncate(0)  # append mode: the next write goes to offset 0
            _write_version(self.version, version)
        elif response.status_code == 206:  # an encoded body's offsets are not the file's
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if encoded or not match or int(match.group(1)) != start:
                fh.truncate(0)
                response.close()
                sent = headers.get("Content-Range", "no Content-Range")
                raise _RangeMismatch(
                    f"asked for bytes from {start}, the server sent {sent}"
                    + (f" ({headers['Content-Encoding']}-encoded)" if encoded else "")
                )


def _validator(headers: Any) -> str:
    """What identifies this version of the remote file for If-Range: a strong ETag (a weak one
    may not be used there), else Last-Modified, else nothing."""
    etag = headers.get("ETag", "")
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified", "")


def _write_version(path: Path, version: str) -> None:
    if version:
        path.write_text(version + "\n")
    else:
        path.unlink(missing_ok=True)
