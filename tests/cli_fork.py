"""`python -m bloodmnist ARGS` as a forked child of a server that has already imported torch.

Most of a short CLI test's time is the interpreter importing torch, torch._dynamo, torchvision,
scikit-learn and SciPy (~7 s per process on a 2-core CPU, benchmarks/cli_startup.py; over 100
processes per suite). The
standard library's forkserver (multiprocessing) imports them once per pytest worker; every
command then runs in a new process forked from it: its own pid, working folder, environment,
argv, stdout/stderr files and exit status, with the modules already in memory. It enters the
CLI as `python -m bloodmnist` does (`main()` with sys.argv set) and exits with the status such a
process would have (SystemExit's code, 1 and a traceback for an uncaught exception).

What a fork cannot reproduce runs as a real `exec` instead (`needs_exec`): an environment that
changes how the interpreter starts (PYTHONPATH, thread counts read at import, ...). Tests of
signals, locks between processes, torchrun, servers and "imports no torch" start their own
`python -m bloodmnist` processes and never come here; so does a test that compares two
processes (`run_cli(..., fresh=True)`: forks of one server share the hash seed and NumPy's
global RNG). BLOODMNIST_TEST_EXEC=1 makes every call a real exec (to rule the fork out when a
test behaves differently). A fork still differs from an exec in ways no test here depends on:
the preloaded modules were imported before the command's own imports, and multiprocessing's
start method in the child is the forkserver.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# Imported by the server before its first fork (an ImportError only makes calls slower).
PRELOAD = [
    "torch",
    "torch._dynamo",  # what torch.optim imports on its first step
    "torchvision",
    "sklearn.metrics",
    "scipy.optimize",
    "bloodmnist.cli.main",
    "bloodmnist.cli.commands",
    "bloodmnist.training.run",
    "bloodmnist.training.finish",
]
# Environment variables read when an interpreter or a library starts (or that a preloaded
# module has cached, like tempfile's TMPDIR), not when a command runs.
STARTUP_ENV = (
    *("PYTHON", "PYTORCH_", "TORCH", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "CUDA_", "LD_"),
    *("TQDM_", "TMPDIR", "LANG", "LC_", "TZ", "BLOODMNIST_TEST_EXEC"),
)

_context: mp.context.ForkServerContext | None = None
_server_env: dict[str, str] = {}  # the environment the server started (and imported) under


def needs_exec(env: dict[str, str]) -> bool:
    """True where the command must run in a freshly started interpreter."""
    if "1" in (os.environ.get("BLOODMNIST_TEST_EXEC"), env.get("BLOODMNIST_TEST_EXEC")):
        return True
    base = _server_env or os.environ
    changed = {k for k in env.keys() | base.keys() if env.get(k) != base.get(k)}
    return any(k.startswith(STARTUP_ENV) for k in changed)


def _server() -> mp.context.ForkServerContext:
    global _context, _server_env
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        _server_env = dict(os.environ)
    return _context


def _child(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: become `python -m bloodmnist ARGS` and exit as it would."""
    for path, fd in ((out, 1), (err, 2)):
        handle = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(handle, fd)
        os.close(handle)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import bloodmnist
    from bloodmnist.cli.main import main

    sys.argv = [str(Path(bloodmnist.__file__).with_name("__main__.py")), *args]  # as `-m` sets it

    code: object = 0
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # the interpreter's way: a traceback, then death by SIGINT
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # what the interpreter prints and returns for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # logging.shutdown() and the like, as at interpreter exit
    if code == -signal.SIGINT:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    raise SystemExit(code)  # multiprocessing maps it to the exit status, streams flushed


def run_forked(
    args: list[str], cwd: str | Path, timeout: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(..., capture_output=True, text=True)'s result, from a forked child."""
    cmd = [sys.executable, "-m", "bloodmnist", *args]
    with tempfile.TemporaryDirectory(prefix="cli-fork-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        proc = _server().Process(target=_child, args=(args, str(cwd), env, str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(cmd, proc.exitcode, out.read_text(), err.read_text())
