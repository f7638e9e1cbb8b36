"""pooch's HTTP downloader made resumable: bytes go to ``<target>.part``, which survives a failed
attempt (and a killed process), and the next attempt asks only for the rest with an HTTP Range
request. The BloodMNIST files reach 1.6 GB at 224 px; without this a connection that drops at 90%
starts again from zero, on every retry.

The part file is trusted only as far as the hash: a server that ignores Range (200) restarts it,
one that answers with another offset or says the range cannot be satisfied (416) is checked and
restarted, and a finished file whose hash does not match is deleted before the next attempt (it
may hold bytes of an older version of the remote file).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
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
    """An HTTP answer that another attempt will not change (a 4xx other than 408/416/429).

    Neither a ValueError nor a requests error, so pooch's retry loop lets it through at once.
    """


class _RangeMismatch(requests.RequestException):
    """A 206 answer for other bytes than asked for: the part file is restarted, pooch retries."""


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
        self.algorithm, self.expected = algorithm, expected

    def __call__(self, url: str, output_file: str, pooch_obj: object) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "ab") as fh:  # created with the user's umask, as any file of theirs
            try:  # two downloads appending to one part file would corrupt it
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NotRetried(
                    f"another process is downloading into {self.part}; wait for it to finish"
                ) from None
            start = fh.seek(0, os.SEEK_END)
            if start:
                log.info("resuming the download at %s (%s)", _bytes_mb(start), self.part)
            try:
                self._get(url, fh, start, pooch_obj)
            except BaseException:
                if fh.tell() == 0:  # no byte to resume from: leave no empty file behind
                    self.part.unlink(missing_ok=True)
                raise
            fh.flush()
            os.fsync(fh.fileno())  # the renamed file survives a crash intact
            got = file_digest(self.part, self.algorithm)
            if not got.startswith(self.expected):
                self.part.unlink(missing_ok=True)  # the next attempt starts from zero
                # a ValueError: pooch retries it (and reports the last one)
                raise ValueError(
                    f"{self.algorithm} hash mismatch: expected {self.expected}, got {got}"
                )
            os.replace(self.part, output_file)

    def _get(self, url: str, fh: IO[bytes], start: int, pooch_obj: object) -> None:
        """Append the rest of the file to ``fh`` (all of it when the server ignores Range)."""
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if start:
            kwargs["headers"] = {"Range": f"bytes={start}-"}
            kwargs["hooks"] = {"response": lambda response, **_: _check_range(response, fh, start)}
        http = pooch.HTTPDownloader(progressbar=self.progress, chunk_size=CHUNK, **kwargs)
        try:
            http(url, fh, pooch_obj)
        except (MissingSchema, InvalidSchema, InvalidURL) as exc:  # ValueErrors: not a hash
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise NotRetried(f"not a usable http(s) URL: {text}") from exc
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 416:  # nothing after `start`: the part is whole, or longer than the file
                return  # the hash decides; a wrong part is then deleted and retried from zero
            if 400 <= code < 500 and code not in (408, 429):
                raise NotRetried(f"HTTP {code} {exc.response.reason}") from exc
            raise


def _check_range(response: requests.Response, fh: IO[bytes], start: int) -> None:
    """Called before the body is read: make the part file fit what the server sends."""
    if response.status_code == 200:  # Range ignored: the whole file follows
        log.info("the server does not resume downloads; starting again from zero")
        fh.truncate(0)  # append mode: the next write goes to offset 0
    elif response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != start:
            fh.truncate(0)
            raise _RangeMismatch(
                f"asked for bytes from {start}, the server sent "
                f"{response.headers.get('Content-Range', 'no Content-Range')}"
            )
