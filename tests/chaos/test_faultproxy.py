"""The fault proxy between a real client and a real echo server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chaos import faultproxy


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_modes_pass_blackhole_and_reset(echo: str) -> None:
    async with faultproxy.proxy(echo) as p:
        host, _, port = p.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"one")
        assert await asyncio.wait_for(reader.read(3), 2) == b"one"

        p.set_mode(faultproxy.Mode.BLACKHOLE)
        writer.write(b"two")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(3), 0.3)
        p.set_mode(faultproxy.Mode.PASS)
        assert await asyncio.wait_for(reader.read(3), 2) == b"two", "held bytes arrive on heal"

        p.set_mode(faultproxy.Mode.RESET)
        try:
            data = await asyncio.wait_for(reader.read(5), 2)
        except ConnectionResetError:
            data = b""
        assert data == b"", "the open connection is reset"
        writer.close()
        p.set_mode(faultproxy.Mode.PASS)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"four")
        assert await asyncio.wait_for(reader.read(4), 2) == b"four"
        writer.close()
        assert p.connections == 2


CLIENT = """
import socket, sys
# NOTE: a dual-stack IPv6 socket, as gRPC's are: it shows in /proc/net/tcp6, v4-mapped.
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(("::ffff:{host}", {port}))
s.settimeout(float(sys.argv[1]))
s.sendall(b"ping")
try:
    print(s.recv(4).decode() or "closed")
except socket.timeout:
    print("silent")
except ConnectionResetError:
    print("reset")
"""


async def _client(
    address: str, wait: float, pids: list[int], started: asyncio.Event | None = None
) -> str:
    import sys

    host, _, port = address.rpartition(":")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT.format(host=host, port=port),
        str(wait),
        stdout=asyncio.subprocess.PIPE,
    )
    pids.append(proc.pid)
    if started is not None:
        started.set()
    out, _ = await proc.communicate()
    return out.decode().strip()


async def test_a_mode_only_for_one_processs_connections(echo: str) -> None:
    pids: list[int] = []
    async with faultproxy.proxy(echo) as p:
        p.sources = lambda: pids
        started = asyncio.Event()
        first = asyncio.create_task(_client(p.address, 1.0, pids, started))
        # NOTE: its pid is known from its start, before it connects; the mode applies to
        # connections open or new.
        await asyncio.wait_for(started.wait(), 5)
        p.set_mode(faultproxy.Mode.BLACKHOLE, only_from=[pids[0]])
        assert await first == "silent", "the named process's connection is black-holed"
        # Another process's connection through the same proxy passes meanwhile.
        assert await _client(p.address, 2.0, pids) == "ping"
        p.set_mode(faultproxy.Mode.RESET, only_from=[pids[1] + 10**6])
        assert await _client(p.address, 2.0, pids) == "ping", "RESET for someone else"


def test_only_from_needs_sources() -> None:
    p = faultproxy.FaultProxy(upstream=("127.0.0.1", 1))
    with pytest.raises(ValueError, match="sources"):
        p.set_mode(faultproxy.Mode.BLACKHOLE, only_from=[1])
