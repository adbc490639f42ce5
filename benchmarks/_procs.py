"""Child processes of a benchmark: started pinned to a core, stopped by PID, CPU measured."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "Children",
    "cpu_seconds",
    "deprioritize",
    "log",
    "own_threads",
    "pin",
    "set_idle",
    "set_slice",
    "threads",
]

_TICK = os.sysconf("SC_CLK_TCK")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads included."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


class Children:
    """The processes this run started, by name; :meth:`stop_all` ends each by its PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        core: int,
        env: dict[str, str],
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        self.procs[name] = proc
        log(f"started {name} (pid {proc.pid}, core {core})")
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str, timeout_s: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log(f"stopped {name} (pid {proc.pid})")

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def wait_http(self, name: str, url: str, timeout_s: float) -> None:
        """Until ``url`` answers 200, the process dies, or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}: {tail}")
            try:
                with _NO_PROXY.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{name} did not answer {url} within {timeout_s:.0f} s")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (PostgreSQL's backends, for one)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pin(pids: list[int], core: int) -> None:
    """Move every thread of these processes and of their descendants to ``core``."""
    for root in pids:
        for pid in descendants(root):
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(core), str(pid)],
                capture_output=True,
                check=False,
            )


def own_threads(pid: int) -> list[int]:
    """The thread ids of one process (not of its children)."""
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]


def threads(pids: list[int]) -> list[int]:
    """Every thread id of these processes and of their descendants."""
    tids: list[int] = []
    for root in pids:
        for pid in descendants(root):
            try:
                tids += own_threads(pid)
            except OSError:
                continue
    return tids


def deprioritize(pids: list[int], niceness: int) -> None:
    """Lower the scheduling priority of every thread of these processes and of their
    descendants (on Linux a nice value is per thread; threads started later inherit it)."""
    for tid in threads(pids):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, niceness)


def set_idle(pids: list[int], idle: bool, niceness: int) -> None:
    """Every thread of these processes (and descendants) to ``SCHED_IDLE``, or back to the
    normal policy at ``niceness``."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for tid in threads(pids):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, policy, os.sched_param(0))
    if not idle:
        deprioritize(pids, niceness)


# sched_setattr(2): its number by architecture, and struct sched_attr (version 1, 56 bytes).
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
_SCHED_ATTR = struct.Struct("IIQiIQQQII")


def set_slice(tids: list[int], slice_ns: int) -> None:
    """Ask the fair scheduler (EEVDF, Linux 6.12 and later) for a time slice of ``slice_ns``
    for these threads (0: the default again). A thread with a shorter slice than the one
    running preempts it when woken; with the default slices it waits until the running
    thread's slice ends, at the next scheduler tick (4 ms here)."""
    if _SCHED_SETATTR is None:
        raise OSError(f"sched_setattr: unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    for tid in tids:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        attr = ctypes.create_string_buffer(
            _SCHED_ATTR.pack(_SCHED_ATTR.size, 0, 0, nice, 0, slice_ns, 0, 0, 0, 0),
            _SCHED_ATTR.size,
        )
        if libc.syscall(_SCHED_SETATTR, tid, attr, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sched_setattr({tid}): {os.strerror(err)}")
