"""A process's liveness in etcd: one lease, kept alive by one task, with a local deadline.

Every key a process must not outlive (its membership record, the leadership keys it holds) is
put under its session's lease, so etcd deletes them all when the process dies or is cut off.

The process also knows, on its own monotonic clock, until when etcd is *sure* to still hold the
lease: a keepalive sent at local time ``t`` and answered with TTL ``ttl`` proves that etcd keeps
the lease at least until ``t + ttl`` (etcd starts the TTL when it receives the request, which is
after ``t``). ``LeaseClock`` keeps that deadline minus a margin; past it the session counts as
lost even if no error was seen (a paused process, a partition), and its leaders stop acting.
Fencing (``coordinator.etcd.Fence``) makes the writes of a leader that did not notice in time
harmless anyway; the local deadline makes it stop promptly.

Exceptions: ``coordinator.etcd.EtcdError`` from granting a lease; a lost lease is not an error
but the ``lost`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import prometheus_client

from coordinator import etcd as etcd_mod

log = logging.getLogger(__name__)

SESSIONS_LOST = prometheus_client.Counter(
    "navigator_session_lost_total", "Leases this process lost (expired in etcd or locally)"
)

Clock = Callable[[], float]


class LeaseClock:
    """The local deadline of a lease: pure bookkeeping on a monotonic clock.

    ``margin`` covers what the proof above does not: clock rate differences between this
    machine and etcd's leader, and scheduling delays between a check and the action it guards.
    """

    def __init__(self, *, ttl: float, margin: float, clock: Clock = time.monotonic) -> None:
        if margin >= ttl:
            raise ValueError(f"lease margin {margin}s must be shorter than its TTL {ttl}s")
        self.ttl = ttl
        self.margin = margin
        self._clock = clock
        self._deadline = -float("inf")

    def renewed(self, *, sent_at: float, ttl: float) -> None:
        """A keepalive (or the grant) sent at ``sent_at`` was answered with ``ttl``."""
        self._deadline = max(self._deadline, sent_at + ttl - self.margin)

    @property
    def deadline(self) -> float:
        """Local time after which the lease may be gone."""
        return self._deadline

    def remaining(self) -> float:
        return self._deadline - self._clock()

    def valid(self) -> bool:
        return self._clock() < self._deadline

    def now(self) -> float:
        return self._clock()


def default_margin(ttl: float) -> float:
    """A fifth of the TTL, at least 0.5 s: what the lease proof leaves to chance."""
    return max(0.5, ttl / 5)


class Session:
    """One granted lease and its keepalive; ``run`` keeps it alive until it is lost.

    Use ``open`` (retries the grant) and ``run`` in a task; ``lost`` is set once, when etcd
    reports the lease gone or the local deadline passes without a successful keepalive.
    """

    def __init__(self, etcd: etcd_mod.Etcd, lease: int, lease_clock: LeaseClock) -> None:
        self.etcd = etcd
        self.lease = lease
        self.clock = lease_clock
        self.lost = asyncio.Event()
        self.renewed = asyncio.Event()
        """Pulsed after every successful keepalive (the deadline moved)."""

    @classmethod
    async def open(
        cls,
        etcd: etcd_mod.Etcd,
        *,
        ttl: int,
        margin: float | None = None,
        clock: Clock = time.monotonic,
    ) -> Session:
        """Grants a lease; raises EtcdError when etcd does not answer within its budget."""
        lease_clock = LeaseClock(
            ttl=ttl, margin=default_margin(ttl) if margin is None else margin, clock=clock
        )
        sent_at = clock()
        lease, granted = await etcd.grant(ttl)
        lease_clock.renewed(sent_at=sent_at, ttl=granted)
        log.info("lease granted", extra={"lease": f"{lease:x}", "ttl": granted})
        return cls(etcd, lease, lease_clock)

    def valid(self) -> bool:
        return not self.lost.is_set() and self.clock.valid()

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            SESSIONS_LOST.inc()
            log.warning("lease lost", extra={"lease": f"{self.lease:x}", "reason": why})
            self.lost.set()

    async def run(self) -> None:
        """Keeps the lease alive; returns once it is lost (never raises for etcd errors)."""
        interval = self.clock.ttl / 3
        failing = False
        while not self.lost.is_set():
            remaining = self.clock.remaining()
            if remaining <= 0:
                self._lose("no keepalive answered before the local deadline")
                return
            # NOTE: after a failure, retry quickly: the deadline is what we are racing.
            delay = min(interval, remaining) if not failing else min(0.2, remaining)
            await wait_event(self.lost, delay)
            if self.lost.is_set():
                return
            sent_at = self.clock.now()
            try:
                ttl = await self.etcd.keepalive(
                    self.lease, within=max(0.1, min(self.etcd.timeout, self.clock.remaining()))
                )
            except etcd_mod.EtcdError as exc:
                if not failing:
                    log.warning(
                        "lease keepalive failed, retrying until the lease's local deadline",
                        extra={
                            "lease": f"{self.lease:x}",
                            "error": str(exc),
                            "remaining_s": round(self.clock.remaining(), 2),
                        },
                    )
                failing = True
                continue
            if ttl <= 0:
                self._lose("etcd no longer has the lease")
                return
            if not self.clock.valid():
                # NOTE: past the deadline the session's leaders have stopped; a late answer
                # must not bring it back to life under them.
                self._lose("the keepalive was answered after the local deadline")
                return
            if failing:
                log.info("lease keepalive succeeds again", extra={"lease": f"{self.lease:x}"})
            failing = False
            self.clock.renewed(sent_at=sent_at, ttl=ttl)
            self.renewed.set()
            self.renewed.clear()

    async def close(self) -> None:
        """Revokes the lease (its keys go at once, so a standby need not wait for the TTL)."""
        self.lost.set()
        with contextlib.suppress(etcd_mod.EtcdError):
            await self.etcd.revoke(self.lease)


async def wait_event(event: asyncio.Event, limit: float | None) -> bool:
    """Waits for ``event`` at most ``limit`` seconds (None: for ever); returns whether it is set.

    NOTE: ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11 ``wait_for`` swallows a
    cancellation that arrives as the inner wait completes, and a loop around it then never
    stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            await event.wait()
    return event.is_set()


async def wait_expired(session: Session) -> None:
    """Returns when ``session`` is lost or its local deadline passes, whichever is first."""
    while True:
        remaining = session.clock.remaining()
        if session.lost.is_set() or remaining <= 0:
            return
        await wait_event(session.lost, remaining)


@contextlib.asynccontextmanager
async def running(
    etcd: etcd_mod.Etcd, *, ttl: int, margin: float | None = None
) -> AsyncIterator[Session]:
    """A session whose keepalive runs for as long as the block; revoked when it exits."""
    session = await Session.open(etcd, ttl=ttl, margin=margin)
    task = asyncio.create_task(session.run(), name=f"lease-{session.lease:x}")
    try:
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.close()


Body = Callable[[Session], Coroutine[Any, Any, None]]


async def run_sessions(etcd: etcd_mod.Etcd, *, ttl: int, body: Body) -> None:
    """Runs ``body(session)`` under a live session, with a new session each time one is lost.

    ``body`` is cancelled when its session is lost; if it returns or raises, so does this.
    Cancelling this revokes the current lease (a clean stop hands everything over at once).
    """
    while True:
        current = await open_retrying(etcd, ttl=ttl)
        keeper = asyncio.create_task(current.run(), name=f"lease-{current.lease:x}")
        worker = asyncio.create_task(body(current), name=f"session-{current.lease:x}")
        try:
            await asyncio.wait([keeper, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            keeper.cancel()
            worker.cancel()
            await asyncio.gather(keeper, worker, return_exceptions=True)
            await asyncio.shield(current.close())
        if not current.lost.is_set() and not worker.cancelled():
            worker.result()  # NOTE: the body ended on its own: re-raise what it raised.
            return
        if not worker.cancelled() and worker.exception() is not None:
            log.warning(
                "a session's work failed as the session was lost",
                extra={"error": str(worker.exception())},
            )
        log.warning("starting a new session", extra={"lost_lease": f"{current.lease:x}"})


async def open_retrying(
    etcd: etcd_mod.Etcd, *, ttl: int, margin: float | None = None, max_delay: float = 5.0
) -> Session:
    """``Session.open``, retried with backoff until etcd grants a lease (logged once)."""
    delay = 0.2
    logged = False
    while True:
        try:
            return await Session.open(etcd, ttl=ttl, margin=margin)
        except etcd_mod.EtcdError as exc:
            if not logged:
                log.warning("cannot get a lease from etcd, retrying", extra={"error": str(exc)})
                logged = True
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)
