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
