"""Verified downloads: the BloodMNIST npz files (via pooch) and pretrained weights.

Every download goes to a temporary file in the target folder and is renamed into place only
after its checksum matches, so the final path never holds a partial or wrong file. This module
reads no environment variables: ``bloodmnist.runtime`` resolves the cache folder and mirror URL
and passes them in.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pooch
import requests
from tqdm.auto import tqdm

from bloodmnist.errors import DataError, DownloadError

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "https://zenodo.org/records/10519652/files"
#: image size -> (file name, MD5) of the official MedMNIST v2 files (Zenodo record 10519652).
OFFICIAL_FILES: dict[int, tuple[str, str]] = {
    28: ("bloodmnist.npz", "7053d0359d879ad8a5505303e11de1dc"),
    64: ("bloodmnist_64.npz", "2b94928a2ae4916078ca51e05b6b800b"),
    128: ("bloodmnist_128.npz", "adace1e0ed228fccda1f39692059dd4c"),
    224: ("bloodmnist_224.npz", "b718ff6835fcbdb22ba9eacccd7b2601"),
}
DEFAULT_CACHE_DIR = Path("~/.cache/bloodmnist")
_CHUNK = 1 << 16
# torchvision weight names end in "-<first hex digits of the sha256>.<ext>" (torch.hub rule).
_HASH_PREFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def _file_digest(path: str | Path, algorithm: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks so large npz files need little memory."""
    return _file_digest(path, "md5", chunk)


def _official_entry(size: int) -> tuple[str, str]:
    if size not in OFFICIAL_FILES:
        sizes = ", ".join(str(s) for s in OFFICIAL_FILES)
        raise DataError(f"no BloodMNIST file for image size {size}; choose one of {sizes}")
    return OFFICIAL_FILES[size]


def official_md5(size: int) -> str:
    """The published MD5 of the official file for ``size``."""
    return _official_entry(size)[1]


def dataset_url(size: int, base_url: str | None = None) -> str:
    """Download URL of the file for ``size`` on Zenodo or on a mirror with the same layout."""
    name = _official_entry(size)[0]
    base = (base_url or OFFICIAL_BASE_URL).rstrip("/")
    return f"{base}/{name}?download=1"


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def _reason(exc: BaseException, limit: int = 160) -> str:
    """The innermost cause squeezed onto one short line (requests' messages span many)."""
    # requests wraps urllib3 errors that wrap socket errors; the innermost one says what happened.
    for _ in range(5):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        if inner is None:
            break
        exc = inner
    text = " ".join(f"{type(exc).__name__.lstrip('_')}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _discard_if_corrupt(path: Path, expected: str, algorithm: str) -> None:
    """Delete a cached file whose hash is wrong, so a failed re-download cannot leave it in use."""
    if not path.is_file():
        return
    got = _file_digest(path, algorithm)
    if got.startswith(expected):
        return
    log.warning("cached %s fails its %s check; downloading it again", path, algorithm.upper())
    path.unlink(missing_ok=True)


class _SyncedDownloader:
    """pooch's HTTP downloader plus an fsync, so the renamed file survives a crash intact."""

    def __init__(self, progress: bool, timeout: float) -> None:
        self._http = pooch.HTTPDownloader(progressbar=progress, timeout=timeout, chunk_size=_CHUNK)

    def __call__(self, url: str, output_file: str, pooch_obj: object) -> None:
        self._http(url, output_file, pooch_obj)
        with open(output_file, "rb+") as fh:
            os.fsync(fh.fileno())


def fetch_dataset(
    size: int = 28,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    expected_md5: str | None = None,
) -> Path:
    """Return the path of the verified npz for ``size``, downloading it when needed.

    ``expected_md5`` overrides the official MD5 (mirrors with re-packed files, tests).
    pooch retries ``retries`` times with a 1 s, 2 s, ... back-off on network errors and on
    hash mismatches, and writes to a temp file that is renamed only after the MD5 matches.
    """
    name, md5 = _official_entry(size)
    md5 = (expected_md5 or md5).lower()
    cache = _cache(cache_dir)
    target = cache / name
    url = dataset_url(size, base_url)
    _discard_if_corrupt(target, md5, "md5")
    fetcher = pooch.create(
        path=cache,
        base_url="",
        registry={name: f"md5:{md5}"},
        urls={name: url},
        retry_if_failed=retries,
        env=None,  # runtime.py owns the environment; pooch must not read it
    )
    by_hand = f"download it by hand and save it as {target}, or pass --data FILE.npz"
    try:
        return Path(fetcher.fetch(name, downloader=_SyncedDownloader(progress, timeout)))
    except ValueError as exc:  # pooch's hash mismatch after all retries
        got = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        got_text = f"got {got.group(1)}" if got else _reason(exc)
        raise DownloadError(
            f"MD5 mismatch for {url}: expected {md5}, {got_text}; {by_hand}"
        ) from exc
    except (requests.RequestException, OSError) as exc:
        raise DownloadError(
            f"could not download {url} after {retries + 1} attempt(s) ({_reason(exc)}); "
            f"expected MD5 {md5}; {by_hand}"
        ) from exc


def verify_file(path: str | Path, size: int = 28) -> dict:
    """Compare a local npz with the official MD5 for ``size``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    expected = official_md5(size)
    md5 = file_md5(path)
    return {"path": str(path), "md5": md5, "expected_md5": expected, "official": md5 == expected}


class _TransferError(Exception):
    """A response that ended early or hashed wrong; worth another attempt."""


def _download_once(url: str, dst: Path, prefix: str, timeout: float, progress: bool) -> None:
    """One attempt: stream to a temp file, fsync, check the sha256 prefix, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "bloodmnist"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            sha = hashlib.sha256()
            received = 0
            bar = tqdm(
                total=total or None, unit="B", unit_scale=True, desc=dst.name, disable=not progress
            )
            with bar:  # closes the bar on errors too
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            # http.client returns a short body silently when the server closes early.
            if total and received != total:
                raise _TransferError(f"body ended after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        digest = sha.hexdigest()
        if not digest.startswith(prefix):
            raise _TransferError(f"sha256 {digest} does not start with {prefix}")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _retryable(exc: BaseException) -> bool:
    # A 4xx other than timeout/rate limit will not change on retry: fail fast.
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return True


def download_pretrained(
    url: str,
    cache_dir: str | Path,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
    *,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch torchvision-style weights into ``cache_dir/<file name>``, checking the sha256 prefix.

    urllib with ``timeout=`` is used instead of ``torch.hub.download_url_to_file`` because the
    latter calls ``urlopen`` without a timeout and hangs forever on a stalled server.
    """
    name = Path(urllib.parse.urlsplit(url).path).name
    match = _HASH_PREFIX.search(name)
    cache = _cache(cache_dir)
    dst = cache / name
    by_hand = f"download it by hand and save it as {dst}"
    if not match:
        raise DownloadError(f"cannot verify {url}: file name has no '-<sha256 prefix>'; {by_hand}")
    prefix = match.group(1)
    _discard_if_corrupt(dst, prefix, "sha256")
    if dst.is_file():
        return dst
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {cache} ({_reason(exc)}); {by_hand}") from exc
    retryable = (urllib.error.URLError, http.client.HTTPException, OSError, _TransferError)
    for attempt in range(retries + 1):
        try:
            _download_once(url, dst, prefix, timeout, progress)
            return dst
        except retryable as exc:
            if attempt == retries or not _retryable(exc):
                raise DownloadError(
                    f"could not download {url} after {attempt + 1} attempt(s) "
                    f"({_reason(exc)}); {by_hand}"
                ) from exc
            log.info("download of %s failed (%s); retrying", url, _reason(exc))
            sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")  # the loop returns or raises
