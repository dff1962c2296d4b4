"""The processes of one ``navigator bench`` run, and what the driver reads from them.

Every process is started by ``navigator.lab.procs.start`` (it dies with the driver, even when
the driver is SIGKILLed) and stopped by its PID only. CPU and memory come from ``/proc/PID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from navigator.lab import procs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ENVOY_FLAGS = ("--concurrency", "1", "--disable-hot-restart", "-l", "warning")

# Stop order, first to last: load, then the control plane, then what it stands on.
ORDER = (
    "sidecars",
    "envoy",
    "replay",
    "xds-reference",
    "xds",
    "translator",
    "watcher",
    "kube-api",
    "etcd",
)


class BenchError(RuntimeError):
    """The system did not start, or did not converge: one line for the user."""


@dataclasses.dataclass
class Proc:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def rss_mib(self, field: str = "VmRSS") -> float:
        return status_kib(self.pid, field) / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # NOTE: the command name (field 2) may hold spaces; the fields after its ')' do not.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class System:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []

    def spawn(self, name: str, role: str, argv: Sequence[str]) -> Proc:
        log = self.work / f"{name}.log"
        proc = Proc(name, role, procs.start(argv, log_file=log), log)
        self.procs.append(proc)
        return proc

    def navigator(self, name: str, role: str, *args: str) -> Proc:
        return self.spawn(name, role, [sys.executable, "-m", "navigator", *args])

    def adopt(self, name: str, role: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.procs.append(Proc(name, role, popen, log))

    def of(self, *roles: str) -> list[Proc]:
        return [p for p in self.procs if p.role in roles]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise BenchError(
                    f"{p.name} exited with {p.popen.returncode} (log {p.log}):\n{tail(p.log)}"
                )

    def stop(self, *roles: str) -> None:
        """SIGTERM the processes of ``roles`` (all when none), role by role in ``ORDER``;
        SIGKILL after 10 s."""
        for role in ORDER:
            if roles and role not in roles:
                continue
            group = [p for p in self.procs if p.role == role]
            for p in group:
                if p.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.kill()
                    p.popen.wait(timeout=5)
                self.procs.remove(p)


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, limit: float, system: System
) -> None:
    """Polls ``predicate`` (a callable returning bool or an awaitable of bool) every 50 ms
    until it holds; BenchError after ``limit`` s or when a process dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        system.check_alive()
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise BenchError(f"{what}: not within {limit:.0f} s")
        await asyncio.sleep(0.05)
