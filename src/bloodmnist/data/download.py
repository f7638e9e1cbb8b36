"""Verified downloads, all through pooch: the BloodMNIST npz files and pretrained weights.

One path for both (`_fetch`): pooch retries network errors and bad hashes with a 1 s, 2 s, ...
back-off; each attempt appends to ``<target>.part`` from where the last one stopped (HTTP Range,
`resumable.py`), and the file is renamed into place only after its checksum matched, so the
final path never holds a partial or wrong file. This module reads no environment variables:
``bloodmnist.runtime`` resolves the cache folder and mirror URL and passes them in.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pooch
import requests

from bloodmnist.data.resumable import (
    NotRetried,
    ResumableDownloader,
    cache_lock,
    file_digest,
    kept_note,
)
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
# torchvision weight names end in "-<first hex digits of the sha256>.<ext>" (torch.hub rule).
_HASH_PREFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks so large npz files need little memory."""
    return file_digest(path, "md5", chunk)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file (model checksums: export metadata, `serve`'s /v1/model)."""
    return file_digest(path, "sha256", chunk)


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


def _verified(path: Path, expected: str, algorithm: str) -> bool:
    return path.is_file() and file_digest(path, algorithm).startswith(expected)


def _discard_if_corrupt(path: Path, expected: str, algorithm: str) -> None:
    """Delete a cached file whose hash is wrong, so a failed re-download cannot leave it in use."""
    if not path.is_file() or _verified(path, expected, algorithm):
        return
    log.warning("cached %s fails its %s check; downloading it again", path, algorithm.upper())
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def _pooch_log(progress: bool) -> Iterator[None]:
    """pooch's own INFO lines ("Downloading file ...") only where a progress bar is wanted."""
    logger = pooch.get_logger()
    level = logger.level
    if not progress:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class _Fetch:
    """One verified download: `target` from `url`, its `algorithm` digest starting with
    `expected` (a whole MD5 or a sha256 prefix); `by_hand` ends every error line."""

    url: str
    target: Path
    algorithm: str
    expected: str
    retries: int
    timeout: float
    progress: bool
    by_hand: str


def _fetch(f: _Fetch) -> Path:
    """The verified file; a cached file that fails the check is deleted first. Errors: one
    line. A verified cached file is returned without a lock or a write (a read-only cache
    works); otherwise other processes fetching into the same folder wait, then find it."""
    if _verified(f.target, f.expected, f.algorithm):
        return f.target
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cache_lock(f.target.parent))
        except OSError as exc:  # the cache folder cannot be written
            raise DownloadError(
                f"could not download {f.url} ({_reason(exc)}); {f.by_hand}"
            ) from exc
        _discard_if_corrupt(f.target, f.expected, f.algorithm)  # again: another process may
        if f.target.is_file():  # have fetched it while this one waited
            return f.target
        return _download(f)


def _download(f: _Fetch) -> Path:
    fetcher = pooch.create(
        path=f.target.parent,
        base_url="",
        registry={f.target.name: None},  # the hash is checked by the downloader (prefixes too)
        urls={f.target.name: f.url},
        retry_if_failed=f.retries,
        env=None,  # runtime.py owns the environment; pooch must not read it
    )
    part = f.target.with_name(f.target.name + ".part")  # kept between attempts and runs
    downloader = ResumableDownloader(part, f.progress, f.timeout, f.algorithm, f.expected)
    name = "MD5" if f.algorithm == "md5" else f.algorithm
    want = f"{name} {f.expected}" if len(f.expected) >= 32 else f"{name} starting with {f.expected}"
    tries = f"after {f.retries + 1} attempt(s)"
    try:
        with _pooch_log(f.progress):
            return Path(fetcher.fetch(f.target.name, downloader=downloader))
    except ValueError as exc:  # the hash of the last attempt did not match
        got = re.search(r"got ([0-9a-fA-F]+)", str(exc))
        got_text = f"got {got.group(1)}" if got else _reason(exc)
        raise DownloadError(
            f"{name} mismatch for {f.url} {tries}: expected {want}, {got_text}; {f.by_hand}"
        ) from exc
    except NotRetried as exc:
        note = kept_note(part)
        raise DownloadError(f"could not download {f.url} ({exc}{note}); {f.by_hand}") from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"could not download {f.url} {tries} ({_reason(exc)}{kept_note(part)}); "
            f"expected {want}; {f.by_hand}"
        ) from exc
    except OSError as exc:  # local (disk full, permissions; requests' errors are OSErrors too)
        raise DownloadError(
            f"could not download {f.url} ({_reason(exc)}{kept_note(part)}); {f.by_hand}"
        ) from exc


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
    """
    name, md5 = _official_entry(size)
    target = _cache(cache_dir) / name
    by_hand = f"download it by hand and save it as {target}, or pass --data FILE.npz"
    url = dataset_url(size, base_url)
    md5 = (expected_md5 or md5).lower()
    return _fetch(_Fetch(url, target, "md5", md5, retries, timeout, progress, by_hand))


def verify_file(path: str | Path, size: int = 28) -> dict:
    """Compare a local npz with the official MD5 for ``size``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    expected = official_md5(size)
    md5 = file_md5(path)
    return {"path": str(path), "md5": md5, "expected_md5": expected, "official": md5 == expected}


def download_pretrained(
    url: str,
    cache_dir: str | Path,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Fetch torchvision-style weights into ``cache_dir/<file name>``, checking that the file's
    sha256 starts with the hex digits its name ends in (torch.hub's naming rule).

    The same pooch path as the dataset, not ``torch.hub.download_url_to_file``: that one calls
    ``urlopen`` without a timeout and hangs forever on a stalled server.
    """
    name = Path(urllib.parse.urlsplit(url).path).name
    match = _HASH_PREFIX.search(name)
    target = _cache(cache_dir) / name
    by_hand = f"download it by hand and save it as {target}"
    if not match:
        raise DownloadError(f"cannot verify {url}: file name has no '-<sha256 prefix>'; {by_hand}")
    sha = match.group(1)
    return _fetch(_Fetch(url, target, "sha256", sha, retries, timeout, progress, by_hand))
