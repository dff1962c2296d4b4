"""What the simulated sidecars report, and the convergence of each change computed from it.

The sidecar processes (``navigator.bench.sidecars``) connect to the driver and send JSON
arrays of events: ``["r", idx, t, n]`` (sidecar ``idx`` of that process holds a complete
config of ``n`` endpoint assignments), ``["a", idx, t, resource, [addr, ...]]`` (addresses
new in a resource), ``["e", idx, t, error]``. A change is registered BEFORE the write that
makes it, with the (sidecar, resource) pairs that must receive its new address; it has
converged when every pair has reported the address. Times are the sidecars' ``time.time()``
at the read of the response, on the driver's machine, so directly comparable with the
driver's own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from navigator.bench import mesh as mesh_mod


@dataclasses.dataclass
class Change:
    label: str
    """``east/ns3/svc3`` and the like, for people."""
    t0: float
    waiting: set[tuple[int, str]]
    """(sidecar index, EDS resource) pairs that have not reported the new address yet."""
    receivers: int
    keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    written: float | None = None
    """When the write that made the change was answered (the API server's), if known."""
    first: float | None = None
    last: float | None = None
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def convergence_ms(self) -> float | None:
        return None if self.last is None or self.waiting else (self.last - self.t0) * 1000


class Client:
    """One connected sidecar process."""

    def __init__(self, writer: asyncio.StreamWriter, index: list[int], order: int) -> None:
        self.writer = writer
        self.index = index
        """The driver's sidecar number of each of the process's sidecars."""
        self.order = order
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()


class Tracker:
    """The driver's end of every sidecar process's report connection."""

    def __init__(self, sidecars: Sequence[mesh_mod.Sidecar], expected: Sequence[int]) -> None:
        self.sidecars = sidecars
        self.expected = expected
        """EDS resources each sidecar holds once complete."""
        self.ready_at: list[float | None] = [None] * len(sidecars)
        self.ready_count = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.pending: dict[tuple[str, str], list[Change]] = {}
        self.clients: list[Client] = []
        self._index: dict[str, tuple[int, list[int]]] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    def reset(self) -> None:
        self.ready_at = [None] * len(self.sidecars)
        self.ready_count = 0
        self.pending.clear()
        self.clients = []
        self._index.clear()

    def expect_process(self, token: str, index: Sequence[int]) -> None:
        """The process that says hello with ``token`` runs the sidecars ``index`` names."""
        self._index[token] = (len(self._index), list(index))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 26)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for c in self.clients:
            c.writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client: Client | None = None
        try:
            hello = json.loads(await reader.readline())
            order, index = self._index[str(hello["token"])]
            client = Client(writer, index, order)
            self.clients.append(client)
            while line := await reader.readline():
                data = json.loads(line)
                if isinstance(data, list):
                    self._events(client.index, data)
                else:
                    client.answers.put_nowait(data)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # NOTE: the driver closing down cancels this handler: the end of the report.
            pass
        finally:
            writer.close()

    def _events(self, index: list[int], events: list[list[Any]]) -> None:
        for ev in events:
            kind = ev[0]
            g = index[ev[1]]
            if kind == "a":
                _, _, t, resource, addrs = ev
                for addr in addrs:
                    for change in self.pending.get((resource, addr), ()):
                        self._arrived(change, g, resource, t)
            elif kind == "r":
                if ev[3] == self.expected[g] and self.ready_at[g] is None:
                    self.ready_at[g] = ev[2]
                    self.ready_count += 1
            elif kind == "e":
                self.errors += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{self.sidecars[g].id}: {ev[3]}")

    def _arrived(self, change: Change, g: int, resource: str, t: float) -> None:
        if (g, resource) not in change.waiting:
            return
        change.waiting.discard((g, resource))
        change.first = t if change.first is None else min(change.first, t)
        change.last = t if change.last is None else max(change.last, t)
        if not change.waiting:
            change.done.set()

    def register(
        self, label: str, pairs: Iterable[tuple[str, str]], receivers: Iterable[int]
    ) -> Change:
        """A change about to be made: ``pairs`` are (EDS resource, ``ip:port``) it adds."""
        pairs = list(pairs)
        receivers = list(receivers)
        change = Change(
            label,
            time.time(),
            {(g, resource) for g in receivers for resource, _ in pairs},
            len(receivers),
            pairs,
        )
        for key in pairs:
            self.pending.setdefault(key, []).append(change)
        if not change.waiting:
            change.done.set()
        return change

    def forget(self, changes: Iterable[Change]) -> None:
        for change in changes:
            for key in change.keys:
                found = self.pending.get(key, [])
                if change in found:
                    found.remove(change)
                if not found:
                    self.pending.pop(key, None)

    async def ask(self, command: str, limit: float = 120.0) -> list[dict[str, Any]]:
        """Sends ``command`` to every process; their answers, in process order."""
        for c in self.clients:
            c.writer.write(command.encode() + b"\n")
        out = []
        for c in sorted(self.clients, key=lambda c: c.order):
            out.append(await asyncio.wait_for(c.answers.get(), limit))
        return out


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 (nearest rank) and max of ``values``; None for none."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50": round(rank(0.5), 1),
        "p99": round(rank(0.99), 1),
        "max": round(ordered[-1], 1),
        "count": len(ordered),
    }
