"""A TCP proxy that injects network faults between two of our processes, on loopback.

The kernel here has no ``netem``, and partitions by nftables need network namespaces; a small
asyncio proxy in the path does the same for one connection path: a process is given the
proxy's address instead of its peer's, and the proxy forwards, delays, swallows or resets.

Modes (``set_mode``), applied to every connection, open or new:

- ``pass``: forward both ways;
- ``delay``: forward after ``delay`` seconds (latency; jitter up to ``jitter``);
- ``blackhole``: forward nothing either way (a silent partition: the peer sees nothing until
  its own keepalives give up); what was sent meanwhile is held, as TCP retransmits it, and
  delivered if the connection is still open when the mode changes back;
- ``reset``: close every connection with RST at once, and new ones as they come.

With ``only_from`` a mode applies only to connections opened by the given processes (found
by their socket in ``/proc``), the others pass: in front of an etcd member's peer port, that
cuts one member off from its peers in both directions while the others still talk.

Only what the test or scenario starts is touched: the proxy listens on an address it is
given and connects only to the one upstream it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable

log = logging.getLogger(__name__)


class Mode(enum.StrEnum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


class FaultProxy:
    """Forwards ``listen`` → ``upstream``; see the module docstring for the modes."""

    def __init__(self, *, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.upstream = upstream
        self._listen = listen
        self.mode = Mode.PASS
        self.delay = 0.0
        self.jitter = 0.0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mode_changed = asyncio.Event()
        self.only_from: frozenset[int] | None = None
        self._owner: dict[asyncio.StreamWriter, int | None] = {}
        self.connections = 0
        """Connections accepted so far."""
        self.sources: Callable[[], Iterable[int]] | None = None
        """The processes whose connections ``only_from`` may name (looked up on accept)."""

    @property
    def address(self) -> str:
        assert self._server is not None, "start the proxy first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self._listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for a, b in list(self._conns):
            _abort(a)
            _abort(b)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def set_mode(
        self,
        mode: Mode,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        only_from: Iterable[int] | None = None,
    ) -> None:
        """Applies ``mode`` to every connection, or only to those ``only_from`` processes
        opened (which needs ``sources``)."""
        if only_from is not None and self.sources is None:
            raise ValueError("only_from needs the proxy's sources")
        self.mode, self.delay, self.jitter = mode, delay, jitter
        self.only_from = None if only_from is None else frozenset(only_from)
        log.info(
            "fault proxy mode",
            extra={
                "mode": str(mode),
                "upstream": str(self.upstream),
                "only_from": sorted(self.only_from) if self.only_from is not None else "all",
            },
        )
        if mode is Mode.RESET:
            for a, b in list(self._conns):
                if self._applies(a):
                    _abort(a)
                    _abort(b)
        self._mode_changed.set()
        self._mode_changed.clear()

    def _applies(self, client: asyncio.StreamWriter) -> bool:
        return self.only_from is None or self._owner.get(client) in self.only_from

    def _mode_of(self, client: asyncio.StreamWriter) -> Mode:
        return self.mode if self._applies(client) else Mode.PASS

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.sources is not None:
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            self._owner[writer] = socket_owner(peer[:2], local[:2], self.sources())
        try:
            await self._serve(reader, writer)
        finally:
            self._owner.pop(writer, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode_of(writer) is Mode.RESET:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, writer)),
            asyncio.create_task(self._pipe(up_reader, writer, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks.difference_update(tasks)
            self._conns.discard(pair)
            for w in pair:
                w.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                while self._mode_of(client) is Mode.BLACKHOLE:
                    await self._mode_changed.wait()
                mode = self._mode_of(client)
                if mode is Mode.RESET:
                    return
                if mode is Mode.DELAY:
                    await asyncio.sleep(self.delay + random.uniform(0, self.jitter))
                writer.write(data)
                await writer.drain()


def _hex_address(address: tuple[str, int]) -> str:
    """An IPv4 address as ``/proc/net/tcp`` writes it (the address in host byte order)."""
    packed = socket.inet_aton(address[0])
    return f"{struct.unpack('<I', packed)[0]:08X}:{address[1]:04X}"


def _hex_address6(address: tuple[str, int]) -> str:
    """An IPv4 address as ``/proc/net/tcp6`` writes it for a dual-stack socket
    (``::ffff:a.b.c.d``, four 32-bit words each in host byte order): gRPC's sockets are such."""
    packed = socket.inet_pton(socket.AF_INET6, "::ffff:" + address[0])
    words = struct.unpack("<4I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{address[1]:04X}"


def socket_owner(
    local: tuple[str, int], remote: tuple[str, int], pids: Iterable[int]
) -> int | None:
    """Which of ``pids`` holds the TCP socket ``local`` → ``remote`` (IPv4 addresses; the
    socket may be IPv4 or dual-stack IPv6); None if none does.

    NOTE: by hand from ``/proc`` (``psutil`` would do it, but walks every process and is not a
    dependency here); only a few candidate processes are looked at, once per connection.
    """
    inode = ""
    for path, wanted in (
        ("/proc/net/tcp", (_hex_address(local), _hex_address(remote))),
        ("/proc/net/tcp6", (_hex_address6(local), _hex_address6(remote))),
    ):
        with contextlib.suppress(OSError), open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                if (fields[1], fields[2]) == wanted:
                    inode = fields[9]
                    break
        if inode:
            break
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        fds = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fds)
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fds}/{name}") == target:
                    return pid
    return None


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes with RST (SO_LINGER 0), as a dead peer or a firewall reset does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    """A running proxy to ``upstream`` (``host:port``) on a free loopback port."""
    host, _, port = upstream.rpartition(":")
    p = FaultProxy(upstream=(host, int(port)))
    await p.start()
    try:
        yield p
    finally:
        await p.close()
