"""A private one-node SLURM cluster on this machine, for the tests and for trying the SLURM launcher.

``python -m tests.slurm_cluster up [DIR]`` (``make slurm-up``) installs Debian's ``slurmctld``,
``slurmd``, ``slurm-client`` and ``munge`` when they are missing (root only), then starts, all from
files under DIR (default ``/tmp/tsdyn-slurm``): ``munged`` as the munge user with its own key and
socket, ``slurmctld`` and ``slurmd`` as root on free ports, with a ``slurm.conf`` naming this host
with its real CPUs and memory (``slurmd -C``), process tracking without cgroups
(``proctrack/linuxproc``, ``task/none``, no ``cgroup.conf``) and no accounting; it returns once the
node is idle. ``python -m tests.slurm_cluster down [DIR]`` (``make slurm-down``) cancels the
cluster's jobs and stops the daemons it started. Nothing outside DIR is touched (besides the
install): SLURM's client commands find this cluster through ``SLURM_CONF=DIR/slurm.conf``, and
another SLURM on the machine, or another of these clusters, is left alone.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "munged")
PARTITION = "tsdyn"
PID_FILES = {"slurmd": "slurmd.pid", "slurmctld": "slurmctld.pid", "munged": "munge/munged.pid"}  # stop order


class Unavailable(RuntimeError):
    """SLURM cannot be started on this machine; the message says why."""


def _run(*cmd: str, env: dict | None = None, timeout: float = 60) -> str:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise Unavailable(f"`{' '.join(cmd)}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}")
    return res.stdout


def install() -> None:
    """Debian's SLURM and munge packages, installed (``apt-get update`` once) if a program is missing."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(missing)} not installed, and installing {' '.join(PACKAGES)} "
                          f"needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-q", env=env, timeout=300)
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES, env=env, timeout=600)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now (held together while they are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_line() -> str:
    """This host as SLURM sees it: ``NodeName=<host> CPUs=.. ... RealMemory=..`` (``slurmd -C``)."""
    return next(line for line in _run("slurmd", "-C").splitlines() if line.startswith("NodeName="))


def write_conf(root: Path) -> Path:
    """``root/slurm.conf`` for a one-node cluster on this host; returns its path."""
    node = node_line()
    host = node.split()[0].split("=", 1)[1]
    ctld_port, slurmd_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
# a private one-node cluster (tests/slurm_cluster.py)
ClusterName=tsdyn
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
StateSaveLocation={root}/slurmctld
SlurmdSpoolDir={root}/slurmd
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# schedule every second (default 60 s): a requeued job starts as soon as cred_expire has passed
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
{node} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def env(root: Path) -> dict[str, str]:
    """The environment under which SLURM's commands talk to the cluster in ``root``."""
    return {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}


def _start_munge(root: Path) -> None:
    munge = root / "munge"
    munge.mkdir()
    munge.chmod(0o755)  # munged: its socket folder open to all (the key itself is 0400)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    _run("runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--socket={munge}/munge.socket",
         f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed")


def wait_idle(root: Path, timeout: float = 60) -> None:
    """Until the node is idle (SLURM's state of a node ready for jobs)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env(root), capture_output=True, text=True)
        state = (res.stdout or res.stderr).strip()
        if state == "idle":
            return
        time.sleep(0.2)
    logs = "; ".join(f"{name}: " + " / ".join((root / name).read_text().splitlines()[-3:])
                     for name in ("slurmctld.log", "slurmd.log") if (root / name).exists())
    raise Unavailable(f"the node is not idle after {timeout:.0f} s (sinfo: {state!r}); {logs}")


def up(root: Path) -> Path:
    """Install if needed, start the cluster in ``root`` (a new or empty folder) and wait until its
    node is idle; returns the ``slurm.conf``. On failure what was started is stopped again."""
    install()
    if os.geteuid() != 0:
        raise Unavailable("slurmctld and slurmd run as root here (SlurmUser=root); this is not root")
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise Unavailable(f"{root} is not empty (a cluster already there? `python -m tests.slurm_cluster down {root}`)")
    root.chmod(0o755)  # munged (the munge user) reaches its folder through it
    try:
        _start_munge(root)
        conf = write_conf(root)
        _run("slurmctld", "-f", str(conf), "-c")  # -c: no state from an earlier cluster
        _run("slurmd", "-f", str(conf))
        wait_idle(root)
    except BaseException:
        down(root)
        raise
    return conf


def _pid(root: Path, daemon: str) -> int | None:
    path = root / PID_FILES[daemon]
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, daemon: str) -> bool:
    """``daemon`` runs as ``pid`` (not a zombie: a daemon's parent here may never reap it; not
    another program that got the pid of a daemon gone long ago)."""
    proc = Path(f"/proc/{pid}")
    try:
        return "zombie" not in (proc / "status").read_text().lower() and daemon in (proc / "cmdline").read_text()
    except OSError:
        return False


def _stop(pid: int, daemon: str) -> None:
    """SIGTERM, and SIGKILL if it still runs 10 s later."""
    for signum, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while _alive(pid, daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid, daemon):
            return


def _job_processes(root: Path) -> list[int]:
    """The running processes of the cluster's jobs: their environment (exported by sbatch) holds
    its ``SLURM_CONF`` and a ``SLURM_JOB_ID``."""
    mark = f"SLURM_CONF={root / 'slurm.conf'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if mark in environ and any(e.startswith(b"SLURM_JOB_ID=") for e in environ):
            pids.append(int(proc.name))
    return pids


def down(root: Path) -> None:
    """Cancel the cluster's jobs (what is left of them after KillWait is killed), then stop its
    daemons (by their pid files in ``root``)."""
    if (root / "slurm.conf").exists() and _pid(root, "slurmctld") is not None:
        subprocess.run(["scancel", "-p", PARTITION], env=env(root), capture_output=True, timeout=30)
        deadline = time.monotonic() + 12  # KillWait=10: SIGTERM, then SIGKILL from slurmstepd
        while _job_processes(root) and time.monotonic() < deadline:
            time.sleep(0.2)
    for pid in _job_processes(root):
        os.kill(pid, signal.SIGKILL)
    for daemon in PID_FILES:
        pid = _pid(root, daemon)
        if pid is not None and _alive(pid, daemon):
            _stop(pid, daemon)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down"):
        print("usage: python -m tests.slurm_cluster up|down [DIR]", file=sys.stderr)
        return 2
    root = Path(argv[1] if len(argv) == 2 else "/tmp/tsdyn-slurm").resolve()
    if argv[0] == "down":
        down(root)
        print(f"stopped the SLURM cluster in {root}")
        return 0
    start = time.perf_counter()
    try:
        conf = up(root)
    except Unavailable as err:
        print(f"SLURM could not start: {err}", file=sys.stderr)
        return 1
    print(f"SLURM cluster up in {time.perf_counter() - start:.1f} s: {node_line()}, partition {PARTITION}\n"
          f"  export SLURM_CONF={conf}    # so that sbatch, squeue, sinfo and tsdyn's launcher find it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
