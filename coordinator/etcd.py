"""etcd access for every Navigator process: reads, batched writes and resumable watches.

aetcd gives us the etcd v3 stubs and error types but leaves reconnection, retries, multi-member
targets and watch resumption to its user; this module adds them, and is the only place that
talks to aetcd.

Exceptions (library errors are wrapped at this boundary)::

    EtcdError
    ├── EtcdUnavailable    no member answered within the retry budget
    └── Compacted          a watch asked for a revision etcd has compacted: relist
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc
import tenacity

from navigator import keys

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``."""


class EtcdError(Exception):
    """Base of the errors of this module."""


class EtcdUnavailable(EtcdError):
    """No etcd member answered."""


class Compacted(EtcdError):
    """The requested revision was compacted; the caller must relist."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted below {revision}")
        self.revision = revision


_TRANSIENT = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
)


def parse_endpoints(value: str | Iterable[str]) -> list[str]:
    """``http://127.0.0.1:2379,127.0.0.2:2379`` → ``["127.0.0.1:2379", "127.0.0.2:2379"]``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        parsed = urllib.parse.urlsplit(item)
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"etcd endpoint {raw!r} is not host:port")
        out.append(f"{parsed.hostname}:{parsed.port}")
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with a channel to every member and require-leader metadata.

    NOTE: aetcd builds its channel in ``connect`` from one host:port; we build it ourselves so
    gRPC can move to another member (round robin over the list) and so that every call carries
    ``hasleader``: a member cut off from its peers refuses instead of serving stale data.
    """

    def __init__(self, endpoints: list[str], timeout: float) -> None:
        host, _, port = endpoints[0].rpartition(":")
        super().__init__(host=host, port=int(port), timeout=timeout)
        self._endpoints = endpoints

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = (
            "ipv4:" + ",".join(self._endpoints)
            if all(_is_ipv4(e.rpartition(":")[0]) for e in self._endpoints)
            else self._endpoints[0]
        )
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self.channel = aetcd.rpc.insecure_channel(target, options=options)
        self.metadata = (("hasleader", "true"),)
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    revision: int
    items: dict[str, KeyValue]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    key: str
    value: bytes | None
    """None for a deletion."""
    revision: int


class Etcd:
    """A connection to an etcd cluster; every call retries transient errors with backoff."""

    def __init__(self, endpoints: list[str], *, timeout: float = 5.0, retry_for: float = 30.0):
        self.endpoints = endpoints
        self._client = _Client(endpoints, timeout)
        self._retry_for = retry_for

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    def _retrying(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0),
            stop=tenacity.stop_after_delay(self._retry_for),
            before_sleep=_log_retry,
            reraise=True,
        )

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await fn(*args, **kwargs)
        except _TRANSIENT as exc:
            raise EtcdUnavailable(
                f"etcd {','.join(self.endpoints)} unavailable: {exc or type(exc).__name__}"
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def ping(self) -> int:
        """The current revision; raises EtcdUnavailable when no member answers."""
        listing = await self.get_prefix(keys.ROOT + "ping/")
        return listing.revision

    async def get(self, key: str) -> KeyValue | None:
        res = await self._call(self._client.get, key.encode())
        if res is None:
            return None
        return KeyValue(key, res.value, res.mod_revision)

    async def get_prefix(self, prefix: str) -> Listing:
        """Every key under ``prefix`` with the revision the listing was taken at."""
        req = aetcd.rpc.RangeRequest(key=prefix.encode(), range_end=keys.prefix_range_end(prefix))

        async def call() -> Any:
            await self._client.connect()
            return await self._client.kvstub.Range(
                req, timeout=self._client._timeout, metadata=self._client.metadata
            )

        resp = await self._call(_wrap_rpc(call))
        items = {
            kv.key.decode(): KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs
        }
        return Listing(revision=resp.header.revision, items=items)

    async def put(self, key: str, value: bytes) -> int:
        res = await self._call(self._client.put, key.encode(), value)
        return int(res.header.revision)

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete, key.encode())

    async def apply(self, *, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Writes ``puts`` and ``deletes`` in transactions of at most MAX_TXN_OPS operations.

        Each transaction is atomic; a larger change is written as several, in the order given
        (puts first), so a caller orders what must land first. Returns the revision of the
        last transaction (0 when nothing was written).
        """
        tx = self._client.transactions
        ops: list[Any] = [tx.put(k.encode(), v) for k, v in puts.items()]
        ops += [tx.delete(k.encode()) for k in deletes]
        revision = 0
        for start in range(0, len(ops), MAX_TXN_OPS):
            chunk = ops[start : start + MAX_TXN_OPS]
            revision = await self._txn_revision(chunk)
        return revision

    async def _txn_revision(self, ops: list[Any]) -> int:
        req = aetcd.rpc.TxnRequest(compare=[], success=self._client._ops_to_requests(ops))

        async def call() -> Any:
            await self._client.connect()
            return await self._client.kvstub.Txn(
                req, timeout=self._client._timeout, metadata=self._client.metadata
            )

        resp = await self._call(_wrap_rpc(call))
        return int(resp.header.revision)

    async def compact(self, revision: int) -> None:
        await self._call(self._client.compact, revision, True)

    async def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncIterator[Event]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order.

        A broken stream is re-opened from the last revision seen + 1, so nothing is missed or
        repeated. Raises Compacted when etcd no longer has ``start_revision``: the caller
        relists (``get_prefix``) and watches again from the listing's revision + 1.

        NOTE: each watch is its own gRPC stream on the shared channel, driven here rather than
        through aetcd's multiplexing Watcher: that one deadlocks when a watch is cancelled
        while another is being created (seen: a hang in about one run out of three).
        """
        next_revision = start_revision
        attempt = 0
        while True:
            try:
                async for batch in self._watch_stream(prefix, next_revision):
                    attempt = 0
                    for ev in batch:
                        next_revision = ev.revision + 1
                        yield ev
            except aetcd.rpc.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except EtcdUnavailable as exc:
                error = str(exc)
            else:
                error = "stream ended"
            attempt += 1
            log.log(
                logging.WARNING if attempt == 1 else logging.DEBUG,
                "etcd watch broken, resuming",
                extra={"prefix": prefix, "revision": next_revision, "error": error},
            )
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))

    async def _watch_stream(self, prefix: str, revision: int) -> AsyncIterator[list[Event]]:
        await self._client.connect()
        create = aetcd.rpc.WatchRequest(
            create_request=aetcd.rpc.WatchCreateRequest(
                key=prefix.encode(),
                range_end=keys.prefix_range_end(prefix),
                start_revision=revision,
                progress_notify=True,
            )
        )
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield create
            # NOTE: closing our side would make etcd end the stream; keep it open.
            await done.wait()

        stub = aetcd.rpc.WatchStub(self._client.channel)
        call = stub.Watch(requests(), metadata=self._client.metadata)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {resp.cancel_reason}")
                if resp.events:
                    yield [
                        Event(
                            key=ev.kv.key.decode(),
                            value=None if ev.type == _DELETE else ev.kv.value,
                            revision=ev.kv.mod_revision,
                        )
                        for ev in resp.events
                    ]
        finally:
            done.set()
            call.cancel()


_DELETE = 1
"""``mvccpb.Event.DELETE``."""


def _wrap_rpc(call: Any) -> Any:
    """Turn raw gRPC errors of a direct stub call into aetcd's exception types."""

    async def wrapped() -> Any:
        try:
            return await call()
        except aetcd.rpc.AioRpcError as exc:
            aetcd.exceptions._handle_exception(exc)

    return wrapped


def _log_retry(state: tenacity.RetryCallState) -> None:
    """One warning when a call starts failing; the retries after it are debug noise."""
    exc = state.outcome.exception() if state.outcome else None
    log.log(
        logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
        "etcd call failed, retrying",
        extra={"attempt": state.attempt_number, "error": str(exc) or type(exc).__name__},
    )
