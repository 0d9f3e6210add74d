"""tsdyn's commands run as a user runs them, ``python -m <module> <args>``, each in a process of its own
(its argv, environment, working folder, stdout/stderr, exit status and signals), forked from a server
that has imported the heavy libraries once (one server for all xdist workers): a command then starts
in ~0.1 s instead of ~6 s (most of it ``import pytorch_lightning``). The tests of what a command
imports (the light path, tab completion) and of commands that answer before torch loads (``--help``,
config errors: under a second in a new interpreter, where the server takes ~6 s to start) run a new
interpreter instead (:func:`interpreter`)."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
       "WANDB_SILENT": "true"}
# as a user's shell has it (W&B's notices not silenced), for the tests of what a command prints
USER_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
# what a run imports that takes time (not wandb: it makes a temporary folder at import that the first
# run to end would delete); tsdyn's entry points are left to the run itself, as __main__
PRELOAD = ["pytorch_lightning", "hydra", "pandas", "matplotlib.pyplot", "tsdyn.module", "tsdyn.build"]

# Under pytest-xdist the controller starts one server for all its workers (:func:`start_shared_server`,
# tests/conftest.py), which each worker attaches to: the preload (~6 s) is paid once, not per worker.
SHARED_SERVER = "TSDYN_TEST_FORK_SERVER"

_server = multiprocessing.get_context("forkserver")
_server.set_forkserver_preload(PRELOAD)


def start_shared_server() -> str:
    """Start this process's fork server (it preloads in the background) and return its socket's
    address, for processes started later to attach to (:func:`_attach`). It runs while this process
    does (it stops when the last holder of its "alive" pipe exits: this process)."""
    from multiprocessing import forkserver
    forkserver.ensure_running()
    return forkserver._forkserver._forkserver_address


def _attach(address: str) -> None:
    """Fork this process's commands from the server at ``address`` (started by another process)
    instead of starting a server of its own. multiprocessing's fork server is meant for one process
    tree: a client only needs the server's address, a resource tracker of its own, and an "alive"
    descriptor that the forked children keep (they never use it here)."""
    from multiprocessing import forkserver, resource_tracker
    server = forkserver._forkserver
    server._forkserver_address = address
    server._forkserver_alive_fd = os.open(os.devnull, os.O_WRONLY)
    server.ensure_running = resource_tracker.ensure_running  # the server runs: only the tracker to start


def shareable() -> bool:
    """This Python's fork server is the one :func:`_attach` knows (3.11-3.13: no authentication key,
    which 3.14 adds); elsewhere each process starts its own."""
    from multiprocessing import forkserver
    return hasattr(forkserver._forkserver, "_forkserver_alive_fd") and not hasattr(forkserver._forkserver,
                                                                                  "_forkserver_authkey")


if os.environ.get(SHARED_SERVER) and os.path.exists(os.environ[SHARED_SERVER]):
    _attach(os.environ[SHARED_SERVER])


def _main(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str | None) -> None:
    """In the forked process: become ``python <argv>`` and exit with its status (atexit hooks run)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err or out)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
    sys.argv = [argv[1], *argv[2:]]
    code = 0
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - the interpreter's own behaviour: traceback, exit 1
        traceback.print_exc()
        code = 1
    # what an interpreter does on its way out and a forked multiprocessing child skips: join the
    # non-daemon threads and run the threading exit hooks (joblib's workers stop there), then atexit
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Command:
    """A started command: ``pid``, ``poll()``, ``send_signal()``, ``wait()``; ``stdout`` and ``stderr``
    (text) once it ended, as ``subprocess.Popen(..., text=True).communicate()`` gives them (with
    ``merge_stderr``, both in ``stdout`` as with ``stderr=subprocess.STDOUT``)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | str = ROOT,
                 merge_stderr: bool = False):
        if argv[0] != "-m":
            raise ValueError(f"argv must start with -m <module>, got {argv[:2]}")
        self.args = argv
        self._files = tempfile.mkdtemp(prefix="tsdyn-cli-")
        self._out, self._err = os.path.join(self._files, "out"), os.path.join(self._files, "err")
        self._proc = _server.Process(target=_main, args=(list(argv), dict(env or ENV), str(cwd), self._out,
                                                         None if merge_stderr else self._err))
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode: int | None = None
        self.stdout = self.stderr = ""

    def poll(self) -> int | None:
        if self.returncode is None and not self._proc.is_alive():
            self._finish()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            self._finish()
            raise subprocess.TimeoutExpired(self.args, timeout, self.stdout, self.stderr)
        self._finish()
        return self.returncode

    def _finish(self) -> None:
        self.returncode = self._proc.exitcode
        self.stdout, self.stderr = (Path(p).read_text(errors="replace") if os.path.exists(p) else ""
                                    for p in (self._out, self._err))
        shutil.rmtree(self._files)
        self._proc.close()


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | str = ROOT,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run([python, *argv], capture_output=True, text=True)`` for ``argv = ["-m", module, ...]``."""
    command = Command(argv, env, cwd)
    command.wait(timeout)
    return subprocess.CompletedProcess([sys.executable, *argv], command.returncode, command.stdout, command.stderr)


def tsdyn_train(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m tsdyn.train <args>`` in the repository root."""
    return run(["-m", "tsdyn.train", *args], env, timeout=timeout)


def interpreter(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python <argv>`` in a new interpreter, in the repository root: for commands that stop on the
    light path (a config error before torch is imported: under a second, where the server takes ~10 s
    to start)."""
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)

