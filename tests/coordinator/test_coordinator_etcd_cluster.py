"""The etcd client against a real 3-member cluster: it moves off a paused member.

A paused member (SIGSTOP) is the hard case: its kernel still accepts connections, so nothing
fails fast. The client must notice it within a call's timeout and stop sending to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from coordinator import etcd as etcd_mod
from navigator.lab import procs


async def _statuses(endpoints: list[str], within: float = 15.0) -> list[etcd_mod.MemberStatus]:
    """Every member's status, waiting for members still starting (a loaded machine)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return [await etcd_mod.member_status(e) for e in endpoints]
        except etcd_mod.EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_calls_move_off_a_paused_member(etcd_cluster: list[procs.EtcdMember]) -> None:
    endpoints = etcd_mod.parse_endpoints(",".join(m.client_url for m in etcd_cluster))
    client = etcd_mod.Etcd(endpoints, timeout=1.0, retry_for=10.0)
    try:
        await client.put("/t/x", b"0")
        statuses = await _statuses(endpoints)
        follower = next(m for m, s in zip(etcd_cluster, statuses, strict=True) if not s.is_leader)
        follower.popen.send_signal(signal.SIGSTOP)
        try:
            slow = 0
            started = time.monotonic()
            for n in range(60):
                t0 = time.monotonic()
                await client.put("/t/x", str(n).encode())
                got = await client.get("/t/x")
                assert got is not None and got.value == str(n).encode()
                slow += time.monotonic() - t0 > 0.5
            # One call may wait out its timeout on the paused member; then it is left alone.
            assert slow <= 2, f"{slow} slow calls of 60"
            assert time.monotonic() - started < 10
        finally:
            follower.popen.send_signal(signal.SIGCONT)
    finally:
        await client.close()


async def test_calls_and_watches_on_a_member_passed_over_carry_on_elsewhere(
    etcd_cluster: list[procs.EtcdMember],
) -> None:
    """A member's channel is closed when it is passed over; grpc.aio then raises
    CancelledError in every call on it. Those calls and watches must go on elsewhere, not
    cancel the tasks that made them (a watcher once stopped this way)."""
    endpoints = etcd_mod.parse_endpoints(",".join(m.client_url for m in etcd_cluster))
    statuses = await _statuses(endpoints)
    index = next(i for i, s in enumerate(statuses) if not s.is_leader)
    follower = etcd_cluster[index]
    # NOTE: the follower first: the client pins it, so the watch and the calls start there.
    ordered = [endpoints[index]] + [e for i, e in enumerate(endpoints) if i != index]
    client = etcd_mod.Etcd(ordered, timeout=1.0, retry_for=10.0)
    try:
        first = await client.put("/t/w", b"0")
        seen: list[bytes | None] = []
        opened, got = asyncio.Event(), asyncio.Event()

        async def watch() -> None:
            async for ev in client.watch_prefix("/t/", start_revision=first):
                seen.append(ev.value)
                opened.set()
                if ev.value == b"after":
                    got.set()

        watcher = asyncio.create_task(watch())
        # NOTE: the first event arrived: the watch stream is open, on the follower.
        async with asyncio.timeout(5):
            await opened.wait()
        follower.popen.send_signal(signal.SIGSTOP)
        try:
            # Both calls wait on the paused member; the first to time out closes its channel
            # under the other, which must be retried, not cancelled.
            results = await asyncio.gather(
                client.put("/t/w", b"after"), client.get("/t/w"), return_exceptions=True
            )
            assert not [r for r in results if isinstance(r, BaseException)], results
            async with asyncio.timeout(10):
                await got.wait()
            assert not watcher.done(), "the watching task ended"
        finally:
            follower.popen.send_signal(signal.SIGCONT)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        assert watcher.cancelled()
    finally:
        await client.close()
