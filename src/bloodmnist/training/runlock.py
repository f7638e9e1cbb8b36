"""The run folder's lock: one training (or resume) per folder at a time.

`run.lock` is held with flock(2), so the kernel releases it when its process ends however it
ends (SIGKILL, OOM, power loss of a local disk's machine): there is no stale lock to guess
about and no window in which two processes can both take one over. The file also records the
owner's pid and host, for the error message. A file naming a live process on this host that
holds no flock (written by an older version of this tool) is still respected.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from bloodmnist.errors import RunLockedError

LOCK_NAME = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks existence: nothing is killed
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_flock(fd: int, tries: int = 1) -> bool:
    """Non-blocking flock; with tries > 1 it waits out another process's check_free probe,
    which holds the lock for microseconds."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.02)
            continue
        return True
    return False


class RunLock:
    """Exclusive lock on a run folder; a second process gets one clear RunLockedError."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self.took_over: str | None = None  # message about a previous owner; logged by the caller
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(5):  # retried only when the file was replaced under us
            fd, created = self._open()
            if not _try_flock(fd, tries=50):  # up to 1 s: a probe descheduled on a busy machine
                os.close(fd)
                self._refuse()
            if not self._still_at_path(fd):  # its owner released (unlinked) it meanwhile
                os.close(fd)
                continue
            pid, host, flock_aware = self._owner()
            if not created and self._legacy_owner(pid, host, flock_aware):
                os.close(fd)
                self._refuse()
            if not created and pid is not None:
                self.took_over = (
                    f"taking over stale lock {self.path} (process {pid} no longer holds it)"
                )
            elif not created:
                self.took_over = f"taking over stale lock {self.path} (unreadable, left by a crash)"
            # "flock": a later reader knows this owner's liveness is the flock, not its pid
            # (a reused pid must not keep a crashed run's folder locked)
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "flock": True})
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
            self._fd, self.held = fd, True
            return
        raise RunLockedError(f"could not lock {self.path}; try again")

    def check_free(self, wait: bool = False) -> None:
        """Raise RunLockedError if another process holds the lock (nothing is changed). `wait`
        (up to 1 s) outlasts other processes' probes of a crashed run's lock, as when every
        rank of a torchrun resume checks at once; a listing answers at once instead."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            free = _try_flock(fd, tries=50 if wait else 1)  # released again when fd closes
        finally:
            os.close(fd)
        if not free or self._legacy_owner(*self._owner()):
            self._refuse()

    def release(self) -> None:
        if self.held and self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees it is gone
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> tuple[int, bool]:
        """(fd, whether this call created the file)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                return os.open(self.path, os.O_RDWR), False
            except FileNotFoundError:  # released between the two calls
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), True

    def _still_at_path(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _owner(self) -> tuple[int | None, str | None, bool]:
        """(pid, host, flock_aware) from one read of the file; flock_aware: written by a
        version that holds the flock for as long as it runs."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None, None, False
        if not isinstance(owner, dict):
            return None, None, False
        pid, host = owner.get("pid"), owner.get("host")
        pid = pid if isinstance(pid, int) else None
        return pid, (host if isinstance(host, str) else None), owner.get("flock") is True

    @staticmethod
    def _legacy_owner(pid: int | None, host: str | None, flock_aware: bool) -> bool:
        """A live process on this host named in a lock it does not flock (an older version)."""
        if flock_aware or pid is None or pid == os.getpid():
            return False
        return host == socket.gethostname() and _pid_alive(pid)

    def _refuse(self) -> None:
        pid, host, _ = self._owner()
        raise RunLockedError(
            f"run folder {self.path.parent} is in use by process {pid} on {host}; wait for it to "
            f"finish or use another --out (delete {self.path} only if that process is gone)"
        )
