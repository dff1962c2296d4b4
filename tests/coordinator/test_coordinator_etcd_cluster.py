"""The etcd client against a real 3-member cluster: it moves off a paused member.

A paused member (SIGSTOP) is the hard case: its kernel still accepts connections, so nothing
fails fast. The client must notice it within a call's timeout and stop sending to it.
"""

from __future__ import annotations

import signal
import time

from coordinator import etcd as etcd_mod
from navigator.lab import procs


async def test_calls_move_off_a_paused_member(etcd_cluster: list[procs.EtcdMember]) -> None:
    endpoints = etcd_mod.parse_endpoints(",".join(m.client_url for m in etcd_cluster))
    client = etcd_mod.Etcd(endpoints, timeout=1.0, retry_for=10.0)
    try:
        await client.put("/t/x", b"0")
        statuses = [await etcd_mod.member_status(e) for e in endpoints]
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
