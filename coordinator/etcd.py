"""etcd access for every Navigator process: reads, fenced batched writes, leases, watches.

aetcd gives us the etcd v3 stubs and error types but leaves reconnection, retries, multi-member
targets, leases kept alive and watch resumption to its user; this module adds them, and is the
only place that talks to aetcd (``coordinator.auth`` sets up etcd's roles through
``Etcd.auth_call``).

Client TLS (``Tls``) goes into the same channel constructor: a member is reached over TLS
when the endpoints are ``https://`` or TLS material is given, in plaintext otherwise.

Exceptions (library errors are wrapped at this boundary)::

    EtcdError
    ├── EtcdUnavailable    no member answered within the retry budget (a failed TLS
    │                      handshake too: its reason is in the message)
    ├── Compacted          a watch asked for a revision etcd has compacted: relist
    ├── Deposed            a fenced write was refused: the writer no longer holds its key
    ├── FenceMoved         a fenced write was refused because an earlier write of the same
    │                      term, reported failed, has landed since: re-read, then write again
    └── PermissionDenied   etcd's authentication refused the call: this client's user (the CN
                           of its certificate) may not read or write that key. Not retried,
                           for reads, writes, lease revocations and watches alike

Unusable configuration raises ValueError before anything connects: endpoints that are not
``host:port`` or mix ``http://`` and ``https://``, and TLS material that is not PEM
(``TlsError``, naming the part).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

# NOTE: gRPC's C core writes its own plain-text lines to stderr (at INFO: every failed TLS
# handshake, once per retry), outside our logs; this module reports those failures itself.
# It reads GRPC_VERBOSITY once, when grpc is first imported, so the default is set before
# aetcd imports it; an operator's setting wins, and a process that imported grpc earlier
# keeps gRPC's own default.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import aetcd
import aetcd.exceptions
import aetcd.rpc
import grpc
import prometheus_client
import tenacity

from navigator import keys

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``."""
MAX_TXN_BYTES = 1024 * 1024
"""What one transaction carries at most: etcd refuses requests over ``--max-request-bytes``
(1.5 MiB by default); a quarter of it is left for keys, framing and the compares."""

MEMBER_FAILURES = prometheus_client.Counter(
    "navigator_etcd_member_failures_total",
    "Calls to an etcd member that failed transiently (the member is then passed over)",
    ["member"],
)
FENCED_TXNS = prometheus_client.Counter(
    "navigator_etcd_fenced_txns_total",
    "Transactions of a leader, by outcome (landed, or rejected because it was deposed)",
    ["result"],
)


class EtcdError(Exception):
    """Base of the errors of this module."""


class EtcdUnavailable(EtcdError):
    """No etcd member answered."""


class Compacted(EtcdError):
    """The requested revision was compacted; the caller must relist."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted below {revision}")
        self.revision = revision


class PermissionDenied(EtcdError):
    """etcd refused a call for this client's user (``coordinator.auth``); retrying cannot help.

    ``what`` is the call, named by its first key (``a write of /navigator/v1/...``); ``user``
    the subject CN of the client certificate, None without one.
    """

    def __init__(self, what: str, user: str | None) -> None:
        who = f"etcd user {user!r}" if user else "this etcd client (no client certificate)"
        super().__init__(f"etcd refused {what}: permission denied to {who}")
        self.what = what
        self.user = user


class FenceMoved(EtcdError):
    """A fenced write was refused because a write of the same term that was reported failed
    (an answer lost, a request that outlived its deadline) has landed since.

    What the writer believes etcd holds may be wrong: it reads again before it writes. The
    next write under the fence is chained to the write that landed.
    """

    def __init__(self, fence: Fence) -> None:
        super().__init__(
            f"write refused: a write of term {fence.token} of {fence.key} reported failed "
            "has landed since"
        )
        self.fence = fence


class Deposed(EtcdError):
    """A fenced write was refused: its leadership key is gone or held by someone else."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"write refused: {fence.key} is no longer held at revision {fence.token}")
        self.fence = fence


@dataclasses.dataclass(frozen=True, slots=True)
class Fence:
    """A leader's fencing token: its leadership key and that key's create revision.

    A write carrying a fence lands only while the key still exists with that create revision,
    so a leader that was deposed (paused, partitioned, slow) can never write; and only if no
    newer write of the term has landed, so a write of the term reported failed cannot land
    after one that followed it (``Etcd._fenced_txn``).
    """

    key: str
    token: int


@dataclasses.dataclass(slots=True)
class _Chain:
    """Where a term's fenced writes stand (``Etcd._fenced_txn``)."""

    revision: int | None = None
    """The fence mark's mod revision after the term's last write that landed; None: unread."""
    sequence: int = 0
    nonce: str = dataclasses.field(default_factory=lambda: secrets.token_hex(6))
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    """One write of a term at a time: each is chained to the one before."""


MAX_CHAINS = 4096
"""Terms whose chains a client keeps at most (a translator holds one term per shard)."""

MAX_RECEIVE = 64 * 1024 * 1024
"""The largest answer a channel takes; listings are paged (``Etcd.get_prefix``) to stay below."""

PAGE_FIRST = 100
"""Keys in a listing's first page: at most 50 MiB of snapshot parts (512 KiB each)."""
PAGE_BYTES = 8 * 1024 * 1024
"""What later pages aim at: their key count follows the sizes seen so far."""
PAGE_MAX = 20_000


def _too_large(exc: BaseException) -> bool:
    """An answer refused for its size (gRPC RESOURCE_EXHAUSTED), under our wrapping."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "code", None)
        if callable(code) and code() == aetcd.rpc.StatusCode.RESOURCE_EXHAUSTED:
            return True
        seen = seen.__cause__ or seen.__context__
    return "larger than max" in str(exc)


_TRANSIENT = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
)


@contextlib.contextmanager
def _closed_channel_is_transient(what: str) -> Iterator[None]:
    """Turns the CancelledError of a call whose channel was closed under it into an error.

    NOTE: grpc.aio raises ``asyncio.CancelledError`` in every call, unary or streaming, of a
    channel that is closed while the call runs (measured: no AioRpcError), and a member's
    channel is closed when it is passed over (``_failed``). Left alone, that error cancels
    whichever task made the call: a front-end's snapshot watch or a watcher's readiness loop
    would end as if stopped. Only a cancellation of the task itself stays a cancellation.
    """
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise EtcdUnavailable(f"{what}: its etcd member's channel was closed") from None


TlsPart = Literal["ca", "cert", "key"]


class TlsError(ValueError):
    """TLS material that cannot be used: ``part`` says which (``ca``, ``cert`` or ``key``),
    ``reason`` why, in a few words."""

    def __init__(self, part: TlsPart, reason: str) -> None:
        super().__init__(f"etcd TLS {part}: {reason}")
        self.part: TlsPart = part
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Tls:
    """Client TLS to etcd, PEM: the CA bundle that signed the members' certificates (None:
    the system's roots) and this client's certificate and key (both or neither; needed when
    etcd runs with ``--client-cert-auth``).

    Checked when made, so a wrong file is a one-line error before anything connects rather
    than a handshake failing on every retry. Read once: a renewed certificate takes a restart.
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = dataclasses.field(default=None, repr=False)
    """NOTE: kept out of ``repr``, so no log line or traceback shows it."""

    def __post_init__(self) -> None:
        if self.cert is None and self.key is not None:
            raise TlsError("key", "a client key needs its certificate")
        if self.cert is not None and self.key is None:
            raise TlsError("cert", "a client certificate needs its key")
        if self.ca is not None:
            _check_certificates("ca", self.ca)
        if self.cert is not None:
            _check_certificates("cert", self.cert)
        if self.key is not None:
            _check_key(self.key)

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> Tls:
        """Reads and checks the files, and that the key is the certificate's."""
        tls = cls(ca=_read("ca", ca), cert=_read("cert", cert), key=_read("key", key))
        if cert is not None and key is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    cert, key, password=_no_password
                )
            except ssl.SSLError as exc:
                raise TlsError("key", "not the key of the client certificate") from exc
        return tls

    def credentials(self) -> Any:
        """gRPC channel credentials (``grpc.ChannelCredentials``)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read(part: TlsPart, path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(part, f"cannot read it: {exc.strerror or exc}") from exc


def _check_certificates(part: TlsPart, pem: bytes) -> None:
    """Parses ``pem`` as X.509 certificates (loading them as trust anchors parses each)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.decode("utf-8", errors="replace")
        )
    except (ssl.SSLError, ValueError) as exc:
        raise TlsError(part, "no PEM certificate in it") from exc


def _check_key(pem: bytes) -> None:
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise TlsError("key", "no PEM private key in it")
    if b"ENCRYPTED" in pem:
        raise TlsError("key", "encrypted; gRPC takes unencrypted keys only")


def _no_password() -> bytes:
    # NOTE: without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TlsError("key", "encrypted; gRPC takes unencrypted keys only")


def _split_endpoints(value: str | Iterable[str]) -> tuple[list[str], str | None]:
    """(``host:port`` of every endpoint, the scheme given: ``http``, ``https`` or None when
    every endpoint is a bare ``host:port``). Mixing ``http://`` and ``https://`` is refused."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    schemes: set[str] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if "://" in item:
            schemes.add(item.partition("://")[0].lower())
        else:
            item = "http://" + item
        parsed = urllib.parse.urlsplit(item)
        if parsed.scheme.lower() not in ("http", "https"):
            raise ValueError(f"etcd endpoint {raw.strip()!r}: the scheme is http or https")
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"etcd endpoint {raw.strip()!r} is not host:port")
        out.append(f"{parsed.hostname}:{parsed.port}")
    if not out:
        raise ValueError("no etcd endpoint given")
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://: give one scheme for all")
    return out, next(iter(schemes), None)


def parse_endpoints(value: str | Iterable[str]) -> list[str]:
    """``http://127.0.0.1:2379,127.0.0.2:2379`` → ``["127.0.0.1:2379", "127.0.0.2:2379"]``.

    The scheme is dropped: to reach ``https://`` endpoints over TLS, give ``Etcd`` (or
    ``member_status``) the URLs themselves, or ``tls``.
    """
    return _split_endpoints(value)[0]


def _tls_for(scheme: str | None, tls: Tls | None) -> Tls | None:
    """What the channels use: ``tls`` if given; the system's roots for ``https://``."""
    if scheme == "http" and tls is not None:
        raise ValueError(
            "etcd endpoints are http:// but TLS is configured: give https:// (or host:port)"
        )
    if scheme == "https" and tls is None:
        return Tls()
    return tls


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on a channel to one member, with require-leader metadata.

    NOTE: aetcd builds its channel in ``connect``; we build it ourselves for the channel
    options and so that every call carries ``hasleader``: a member cut off from its peers
    refuses (and cancels its watches) instead of serving stale data. Keepalive pings (at least
    5 s apart: etcd's ``--grpc-keepalive-min-time``) with ``ping_timeout_ms`` (without which
    an unanswered ping blocks the keepalive for a minute) end a connection to a silent member
    within about 8 s even when no call fails.
    """

    def __init__(self, endpoint: str, timeout: float, credentials: Any = None) -> None:
        host, _, port = endpoint.rpartition(":")
        super().__init__(host=host, port=int(port), timeout=timeout)
        self._endpoint = endpoint
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = [
            ("grpc.keepalive_time_ms", 6_000),
            ("grpc.keepalive_timeout_ms", 2_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", 2_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.max_receive_message_length", MAX_RECEIVE),
        ]
        if self._credentials is None:
            self.channel = aetcd.rpc.insecure_channel(self._endpoint, options=options)
        else:
            # NOTE: the member's certificate is checked against the host of ``endpoint``
            # (an IP address needs an IP SAN).
            self.channel = aetcd.rpc.secure_channel(
                self._endpoint, self._credentials, options=options
            )
        self.metadata = (("hasleader", "true"),)
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self.authstub = aetcd.rpc.AuthStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


MEMBER_COOLDOWN = 5.0
"""Seconds a member that failed a call is passed over (unless every member has failed)."""


class _Member:
    """One member's channel, and until when it is passed over after a failure."""

    def __init__(self, endpoint: str, timeout: float, credentials: Any) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.credentials = credentials
        self.client = _Client(endpoint, timeout, credentials)
        self.down_until = 0.0

    def reset(self) -> asyncio.Task[None]:
        """A new channel; the old one is closed, ending every call and watch on it (they are
        retried, or resumed, on the member pinned next)."""
        old, self.client = self.client, _Client(self.endpoint, self.timeout, self.credentials)
        return asyncio.ensure_future(old.close())


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


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


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """Every change up to ``revision`` has been delivered on this watch (etcd's progress
    notification, sent when asked for with ``Progress.request``)."""

    revision: int


class ProgressRequests:
    """Asks a running watch for a progress notification (``watch_progress``).

    Requests made while one is unanswered are one request: a caller that asks on every
    event costs one round trip, not one per event.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[None] = asyncio.Queue()
        self._wanted = False

    def request(self) -> None:
        if not self._wanted:
            self._wanted = True
            self._queue.put_nowait(None)

    async def next(self) -> None:
        await self._queue.get()

    def answered(self) -> None:
        self._wanted = False

    def stream_started(self) -> None:
        """A new stream: a request the old one took with it is asked again."""
        if self._wanted and self._queue.empty():
            self._queue.put_nowait(None)


class Etcd:
    """A connection to an etcd cluster; every call retries transient errors with backoff.

    ``endpoints`` are ``host:port`` or URLs (see ``parse_endpoints``). The channels speak TLS
    when ``tls`` is given or the endpoints are ``https://`` (then, without ``tls``, the
    member's certificate is checked against the system's roots); ``http://`` endpoints with
    ``tls`` are a ValueError. Nothing connects before the first call.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        *,
        tls: Tls | None = None,
        timeout: float = 5.0,
        retry_for: float = 30.0,
    ):
        addresses, scheme = _split_endpoints(endpoints)
        self.endpoints = addresses
        self.tls = _tls_for(scheme, tls)
        self.timeout = timeout
        credentials = None if self.tls is None else self.tls.credentials()
        self._members = [_Member(e, timeout, credentials) for e in addresses]
        self._pinned = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._retry_for = retry_for
        self._chains: dict[Fence, _Chain] = {}

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for m in self._members:
            await m.client.close()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    def _member(self) -> _Member:
        """The pinned member, or the next one not passed over (the least recently failed
        one when all are).

        NOTE: one member at a time, as etcd's own clients do, rather than gRPC's round robin:
        a member that is paused (SIGSTOP; its kernel still accepts connections) then costs
        one timed-out call, after which it is passed over, instead of a third of all calls
        until keepalive notices (measured: about 8 s).
        """
        now = time.monotonic()
        n = len(self._members)
        for i in range(n):
            index = (self._pinned + i) % n
            if self._members[index].down_until <= now:
                self._pinned = index
                return self._members[index]
        index = min(range(n), key=lambda i: self._members[i].down_until)
        self._pinned = index
        return self._members[index]

    def _failed(self, member: _Member, error: object) -> None:
        """A call to ``member`` failed transiently: pass it over, move its watches."""
        now = time.monotonic()
        if member.down_until > now:
            return
        member.down_until = now + MEMBER_COOLDOWN
        MEMBER_FAILURES.labels(member=member.endpoint).inc()
        if len(self._members) > 1:
            log.warning(
                "etcd member failed a call, moving to another",
                extra={"member": member.endpoint, "error": str(error) or type(error).__name__},
            )
            task = member.reset()
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _retrying(self, retry_for: float | None = None) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0),
            stop=tenacity.stop_after_delay(self._retry_for if retry_for is None else retry_for),
            before_sleep=_log_retry,
            reraise=True,
        )

    async def _rpc(self, stub: str, method: str, request: Any, retry_for: float | None) -> Any:
        """One unary call on a stub of our channel, retried on transient errors."""

        async def call() -> Any:
            member = self._member()
            client = member.client
            await client.connect()
            fn = getattr(getattr(client, stub), method)
            try:
                with _closed_channel_is_transient(method):
                    return await fn(request, timeout=self.timeout, metadata=client.metadata)
            except EtcdUnavailable as exc:
                raise aetcd.exceptions.ConnectionFailedError(str(exc)) from exc
            except aetcd.rpc.AioRpcError as exc:
                if exc.code() == aetcd.rpc.StatusCode.CANCELLED:
                    # NOTE: its channel was closed under it (the member was passed over).
                    raise aetcd.exceptions.ConnectionFailedError("channel closed") from exc
                if exc.code() == aetcd.rpc.StatusCode.PERMISSION_DENIED:
                    # NOTE: not a ClientError, so tenacity does not retry it.
                    raise self._denied(_subject(method, request)) from exc
                try:
                    aetcd.exceptions._handle_exception(exc)
                except _TRANSIENT as mapped:
                    self._failed(member, mapped)
                    raise

        try:
            async for attempt in self._retrying(retry_for):
                with attempt:
                    return await call()
        except _TRANSIENT as exc:
            raise EtcdUnavailable(
                f"etcd {','.join(self.endpoints)} unavailable: {exc or type(exc).__name__}"
            ) from exc
        except aetcd.exceptions.ClientError as exc:
            raise EtcdError(f"etcd refused {method}: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _kv(self, method: str, request: Any, retry_for: float | None = None) -> Any:
        return await self._rpc("kvstub", method, request, retry_for)

    def _denied(self, what: str) -> PermissionDenied:
        cert = None if self.tls is None else self.tls.cert
        return PermissionDenied(what, None if cert is None else _certificate_user(cert))

    # --- reads ----------------------------------------------------------------------------

    async def ping(self) -> int:
        """The current revision; raises EtcdUnavailable when no member answers."""
        listing = await self.get_prefix(keys.ROOT + "ping/")
        return listing.revision

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._kv("Range", aetcd.rpc.RangeRequest(key=key.encode()))
        return _kv_of(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> Listing:
        """Every key under ``prefix`` with the revision the listing was taken at.

        NOTE: read in pages, every page at the first one's revision, so the listing is one
        consistent cut however large (a mesh's snapshots are more than the 64 MiB a gRPC
        answer may carry). Page sizes follow the value sizes seen; a page refused for its
        size is asked again at half. A compaction between pages starts the listing over.
        """
        for attempt in range(3):
            try:
                return await self._list_pages(prefix, keys_only)
            except Compacted:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _list_pages(self, prefix: str, keys_only: bool) -> Listing:
        start, end = prefix.encode(), keys.prefix_range_end(prefix)
        revision = 0
        limit = PAGE_FIRST
        items: dict[str, KeyValue] = {}
        size = 0
        while True:
            req = aetcd.rpc.RangeRequest(
                key=start, range_end=end, keys_only=keys_only, limit=limit, revision=revision
            )
            try:
                resp = await self._kv("Range", req)
            except EtcdError as exc:
                if _too_large(exc) and limit > 1:
                    limit = max(1, limit // 2)
                    continue
                if revision and "compacted" in str(exc):
                    raise Compacted(revision) from exc
                raise
            if not revision:
                revision = int(resp.header.revision)
            for kv in resp.kvs:
                items[kv.key.decode()] = _kv_of(kv)
                size += len(kv.key) + len(kv.value)
            if not resp.more or not resp.kvs:
                return Listing(revision=revision, items=items)
            start = resp.kvs[-1].key + b"\0"
            average = max(1, size // len(items))
            limit = max(1, min(PAGE_MAX, PAGE_BYTES // average))

    async def latest_mod_revision(self, prefix: str) -> tuple[int, int]:
        """(the newest mod revision of a key under ``prefix`` or 0, the current revision)."""
        req = aetcd.rpc.RangeRequest(
            key=prefix.encode(),
            range_end=keys.prefix_range_end(prefix),
            keys_only=True,
            limit=1,
            sort_order=aetcd.rpc.RangeRequest.DESCEND,
            sort_target=aetcd.rpc.RangeRequest.MOD,
        )
        resp = await self._kv("Range", req)
        newest = resp.kvs[0].mod_revision if resp.kvs else 0
        return int(newest), int(resp.header.revision)

    # --- writes ---------------------------------------------------------------------------

    async def put(
        self, key: str, value: bytes, *, lease: int = 0, fence: Fence | None = None
    ) -> int:
        """Writes one key (under ``lease`` if given); returns the revision of the write."""
        return await self.apply(puts={key: value}, lease=lease, fence=fence)

    async def delete(self, key: str, *, fence: Fence | None = None) -> int:
        return await self.apply(puts={}, deletes=[key], fence=fence)

    async def apply(
        self,
        *,
        puts: Mapping[str, bytes],
        deletes: Iterable[str] = (),
        fence: Fence | None = None,
        lease: int = 0,
    ) -> int:
        """Writes ``puts`` and ``deletes`` in transactions within etcd's limits.

        A transaction holds at most MAX_TXN_OPS operations and MAX_TXN_BYTES of keys and
        values; each is atomic, and a larger change is written as several, in the order given
        (puts first), so a caller orders what must land first. With ``fence`` every
        transaction lands only if the fence still holds, else Deposed is raised and nothing
        more is written; FenceMoved when an earlier write of the term, reported failed, has
        landed since (``_fenced_txn``). Returns the revision of the last transaction (0 when
        nothing was written).
        """
        ops: list[Any] = [
            aetcd.rpc.RequestOp(
                request_put=aetcd.rpc.PutRequest(key=k.encode(), value=v, lease=lease)
            )
            for k, v in puts.items()
        ]
        ops += [
            aetcd.rpc.RequestOp(request_delete_range=aetcd.rpc.DeleteRangeRequest(key=k.encode()))
            for k in deletes
        ]
        revision = 0
        # NOTE: a fenced transaction also puts its fence mark: one operation fewer for the rest.
        for chunk in _batches(ops, MAX_TXN_OPS - (fence is not None)):
            revision = await self._txn(chunk, fence)
        return revision

    async def _txn(self, ops: list[Any], fence: Fence | None) -> int:
        if fence is None:
            resp = await self._kv("Txn", aetcd.rpc.TxnRequest(success=ops))
            return int(resp.header.revision)
        chain = self._chain(fence)
        async with chain.lock:
            return await self._fenced_txn(ops, fence, chain)

    def _chain(self, fence: Fence) -> _Chain:
        chain = self._chains.get(fence)
        if chain is None:
            if len(self._chains) >= MAX_CHAINS:
                # NOTE: a term's chain is dropped when it ends (Deposed); this bounds the rest.
                for old in [f for f, c in self._chains.items() if not c.lock.locked()]:
                    del self._chains[old]
            chain = self._chains[fence] = _Chain()
        return chain

    async def _fenced_txn(self, ops: list[Any], fence: Fence, chain: _Chain) -> int:
        """One transaction of a term, chained to the term's last one that landed.

        NOTE: a write etcd reported failed may still land later: a proposal a partitioned
        member forwarded, or a request that outlived its deadline, is applied when the
        cluster heals, seconds after newer writes of the same term. The fence alone lets it
        land (the term still holds its key), and old state then overwrites new. So besides
        the term's key, each transaction compares the fence mark's mod revision with that of
        the term's last write that landed, and puts the mark with a value of its own: once
        any write of the term lands, every older one still in flight is refused for good.
        When a compare fails, what etcd holds tells why: the key gone or recreated (Deposed),
        this very request landed already (a retry after a lost answer: success), or an
        earlier write reported failed has landed (FenceMoved; the chain follows it).
        """
        mark_key = keys.fence_mark_key(fence.key).encode()
        if chain.revision is None:
            kv = await self.get(mark_key.decode())
            chain.revision = kv.mod_revision if kv is not None else 0
        chain.sequence += 1
        mark = keys.fence_mark_value(fence.token, f"{chain.nonce}.{chain.sequence}")
        req = aetcd.rpc.TxnRequest(
            compare=[
                _fence_compare(fence),
                aetcd.rpc.Compare(
                    key=mark_key,
                    target=aetcd.rpc.Compare.MOD,
                    result=aetcd.rpc.Compare.EQUAL,
                    mod_revision=chain.revision,
                ),
            ],
            success=[
                *ops,
                aetcd.rpc.RequestOp(request_put=aetcd.rpc.PutRequest(key=mark_key, value=mark)),
            ],
            failure=[
                aetcd.rpc.RequestOp(request_range=aetcd.rpc.RangeRequest(key=fence.key.encode())),
                aetcd.rpc.RequestOp(request_range=aetcd.rpc.RangeRequest(key=mark_key)),
            ],
        )
        resp = await self._kv("Txn", req)
        if resp.succeeded:
            FENCED_TXNS.labels(result="landed").inc()
            chain.revision = int(resp.header.revision)
            return chain.revision
        held = resp.responses[0].response_range.kvs
        if not held or held[0].create_revision != fence.token:
            FENCED_TXNS.labels(result="rejected").inc()
            self._chains.pop(fence, None)
            raise Deposed(fence)
        now = resp.responses[1].response_range.kvs
        chain.revision = int(now[0].mod_revision) if now else 0
        if now and now[0].value == mark:
            FENCED_TXNS.labels(result="landed").inc()
            return chain.revision
        FENCED_TXNS.labels(result="moved").inc()
        raise FenceMoved(fence)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> tuple[bool, KeyValue]:
        """Writes ``key`` only if it does not exist; returns (created, the key as it is now)."""
        req = aetcd.rpc.TxnRequest(
            compare=[
                aetcd.rpc.Compare(
                    key=key.encode(),
                    target=aetcd.rpc.Compare.CREATE,
                    result=aetcd.rpc.Compare.EQUAL,
                    create_revision=0,
                )
            ],
            success=[
                aetcd.rpc.RequestOp(
                    request_put=aetcd.rpc.PutRequest(key=key.encode(), value=value, lease=lease)
                )
            ],
            failure=[aetcd.rpc.RequestOp(request_range=aetcd.rpc.RangeRequest(key=key.encode()))],
        )
        resp = await self._kv("Txn", req)
        if resp.succeeded:
            rev = int(resp.header.revision)
            return True, KeyValue(key, value, rev, create_revision=rev, lease=lease)
        kvs = resp.responses[0].response_range.kvs
        if not kvs:  # NOTE: deleted between the compare and the range: impossible in one txn.
            raise EtcdError(f"{key}: neither created nor found")
        return False, _kv_of(kvs[0])

    async def compact(self, revision: int) -> None:
        await self._kv("Compact", aetcd.rpc.CompactionRequest(revision=revision, physical=True))

    # --- leases ---------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns (its id, the TTL etcd granted)."""
        resp = await self._rpc(
            "leasestub", "LeaseGrant", aetcd.rpc.LeaseGrantRequest(TTL=ttl), None
        )
        if resp.error:
            raise EtcdError(f"lease grant refused: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def keepalive(self, lease: int, *, within: float) -> int:
        """Refreshes ``lease`` once; returns its new TTL, 0 when etcd no longer has it.

        Not retried here: the caller knows how long its lease lasts and retries within that.
        """

        member = self._member()

        async def once() -> int:
            client = member.client
            await client.connect()
            call = client.leasestub.LeaseKeepAlive(
                iter([aetcd.rpc.LeaseKeepAliveRequest(ID=lease)]),
                timeout=within,
                metadata=client.metadata,
            )
            async for reply in call:
                return int(reply.TTL)
            return 0

        try:
            async with asyncio.timeout(within):
                with _closed_channel_is_transient("lease keepalive"):
                    return await once()
        except aetcd.rpc.AioRpcError as exc:
            if exc.code() == aetcd.rpc.StatusCode.PERMISSION_DENIED:
                raise self._denied(f"the keepalive of lease {lease:x}") from exc
            if exc.code() != aetcd.rpc.StatusCode.CANCELLED:
                self._failed(member, exc.code().name)
            raise EtcdUnavailable(f"lease keepalive failed: {exc.code().name}") from exc
        except TimeoutError as exc:
            self._failed(member, "timeout")
            raise EtcdUnavailable("lease keepalive timed out") from exc

    async def revoke(self, lease: int) -> None:
        """Ends ``lease`` now: every key under it is deleted. A lease already gone is fine."""
        try:
            await self._rpc("leasestub", "LeaseRevoke", aetcd.rpc.LeaseRevokeRequest(ID=lease), 2.0)
        except EtcdError as exc:
            if isinstance(exc, EtcdUnavailable) or "not found" not in str(exc):
                raise

    # --- authentication (set up by coordinator.auth) ---------------------------------------

    async def auth_call(self, method: str, **fields: Any) -> Any:
        """One call of etcd's Auth service, retried like every call: ``method`` as in etcd's
        ``rpc.proto`` (``RoleAdd``, ``UserGrantRole``, ``AuthEnable``...), the request's
        fields by name, nested messages as dicts (``perm={"permType": 2, "key": b"..."}``).

        Returns etcd's answer (a protobuf message). Raises PermissionDenied when auth is on
        and this client is not ``root``, EtcdError for what etcd refuses (an existing role:
        ``role name already exists``).
        """
        name = method if method.startswith("Auth") else f"Auth{method}"
        request = getattr(aetcd.rpc, f"{name}Request")(**fields)
        return await self._rpc("authstub", method, request, None)

    # --- watches --------------------------------------------------------------------------

    async def watch_progress(
        self, prefix: str, *, start_revision: int, progress: ProgressRequests
    ) -> AsyncIterator[Event | Progress]:
        """``watch_prefix`` that also yields a ``Progress`` after each ``progress.request()``."""
        async for item in self._watch(
            prefix.encode(), keys.prefix_range_end(prefix), start_revision, progress
        ):
            yield item

    async def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncIterator[Event]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order.

        A broken stream is re-opened from the last revision seen + 1, so nothing is missed or
        repeated. Raises Compacted when etcd no longer has ``start_revision``: the caller
        relists (``get_prefix``) and watches again from the listing's revision + 1.

        NOTE: each watch is its own gRPC stream on the shared channel, driven here rather than
        through aetcd's multiplexing Watcher: that one deadlocks when a watch is cancelled
        while another is being created (seen: a hang in about one run out of three).
        """
        async for ev in self._watch(
            prefix.encode(), keys.prefix_range_end(prefix), start_revision, None
        ):
            assert isinstance(ev, Event)
            yield ev

    async def watch_key(self, key: str, *, start_revision: int) -> AsyncIterator[Event]:
        """Every change of one key from ``start_revision`` on (see ``watch_prefix``)."""
        async for ev in self._watch(key.encode(), b"", start_revision, None):
            assert isinstance(ev, Event)
            yield ev

    async def _watch(
        self,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        progress: ProgressRequests | None,
    ) -> AsyncIterator[Event | Progress]:
        next_revision = start_revision
        attempt = 0
        while True:
            try:
                async for batch in self._watch_stream(key, range_end, next_revision, progress):
                    attempt = 0
                    for ev in batch:
                        if isinstance(ev, Event):
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
                extra={"prefix": key.decode(), "revision": next_revision, "error": error},
            )
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))

    async def _watch_stream(
        self, key: bytes, range_end: bytes, revision: int, progress: ProgressRequests | None
    ) -> AsyncIterator[list[Event | Progress]]:
        member = self._member()
        client = member.client
        await client.connect()
        create = aetcd.rpc.WatchRequest(
            create_request=aetcd.rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=revision, progress_notify=True
            )
        )
        done = asyncio.Event()
        if progress is not None:
            progress.stream_started()

        async def requests() -> AsyncIterator[Any]:
            yield create
            # NOTE: closing our side would make etcd end the stream; keep it open.
            while progress is not None:
                await progress.next()
                yield aetcd.rpc.WatchRequest(progress_request=aetcd.rpc.WatchProgressRequest())
            await done.wait()

        stub = aetcd.rpc.WatchStub(client.channel)
        # NOTE: ``hasleader`` matters most here: a member that loses its leader cancels the
        # watch (we resume on another member) instead of going silent.
        call = stub.Watch(requests(), metadata=client.metadata)
        try:
            with _closed_channel_is_transient("watch"):
                async for resp in call:
                    if resp.compact_revision:
                        raise Compacted(resp.compact_revision)
                    if resp.canceled and "permission denied" in resp.cancel_reason.lower():
                        # NOTE: etcd checks read permission when the watch is created and
                        # cancels it at once; resuming would be refused the same way.
                        raise self._denied(f"a watch of {_range_name(key, range_end)}")
                    if resp.canceled:
                        self._failed(member, resp.cancel_reason)
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
                    elif progress is not None and not resp.created and resp.header.revision:
                        # NOTE: an empty response is a progress notification: nothing up to its
                        # revision is still to come on this stream.
                        progress.answered()
                        yield [Progress(int(resp.header.revision))]
        except aetcd.rpc.AioRpcError as exc:
            if exc.code() != aetcd.rpc.StatusCode.CANCELLED:
                self._failed(member, exc.code().name)
            raise
        finally:
            done.set()
            call.cancel()


@dataclasses.dataclass(frozen=True, slots=True)
class MemberStatus:
    endpoint: str
    member_id: int
    leader_id: int
    revision: int
    raft_term: int

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id != 0


async def member_status(
    endpoint: str, *, within: float = 2.0, tls: Tls | None = None
) -> MemberStatus:
    """What one member (``host:port`` or a URL) says of itself; raises EtcdUnavailable if it
    is silent. ``tls`` as for ``Etcd``."""
    addresses, scheme = _split_endpoints([endpoint])
    if len(addresses) != 1:
        raise ValueError(f"one etcd member, not {endpoint!r}")
    tls = _tls_for(scheme, tls)
    client = _Client(addresses[0], within, None if tls is None else tls.credentials())
    try:
        await client.connect()
        resp = await client.maintenancestub.Status(
            aetcd.rpc.StatusRequest(), timeout=within, metadata=()
        )
    except aetcd.rpc.AioRpcError as exc:
        raise EtcdUnavailable(f"etcd member {endpoint}: {exc.code().name}") from exc
    finally:
        await client.close()
    return MemberStatus(
        endpoint=endpoint,
        member_id=int(resp.header.member_id),
        leader_id=int(resp.leader),
        revision=int(resp.header.revision),
        raft_term=int(resp.raftTerm),
    )


_DELETE = 1
"""``mvccpb.Event.DELETE``."""


def _kv_of(kv: Any) -> KeyValue:
    return KeyValue(
        kv.key.decode(),
        kv.value,
        int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        lease=int(kv.lease),
    )


def _range_name(key: bytes, range_end: bytes) -> str:
    name = key.decode(errors="replace")
    return f"{name}*" if range_end else name


def _subject(method: str, request: Any) -> str:
    """What a refused call was about, for its error: ``a write of <first key> (and N more)``."""
    if method == "Range":
        return f"a read of {_range_name(request.key, request.range_end)}"
    if method == "Txn":
        written = [
            op.request_put.key or op.request_delete_range.key
            for op in request.success
            if op.WhichOneof("request") in ("request_put", "request_delete_range")
        ]
        if written:
            more = f" (and {len(written) - 1} more keys)" if len(written) > 1 else ""
            return f"a write of {written[0].decode(errors='replace')}{more}"
        if request.compare:
            return f"a transaction on {request.compare[0].key.decode(errors='replace')}"
    if method == "LeaseRevoke":
        return f"the revocation of lease {request.ID:x}"
    return method


def _certificate_user(pem: bytes) -> str | None:
    """The subject CN of a PEM certificate: the etcd user of a client with client-cert auth."""
    # NOTE: imported here: only an error message needs it.
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        found = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return None
    return str(found[0].value) if found else None


def _fence_compare(fence: Fence) -> Any:
    return aetcd.rpc.Compare(
        key=fence.key.encode(),
        target=aetcd.rpc.Compare.CREATE,
        result=aetcd.rpc.Compare.EQUAL,
        create_revision=fence.token,
    )


def _batches(ops: list[Any], max_ops: int = MAX_TXN_OPS) -> Iterable[list[Any]]:
    """Consecutive runs of ``ops`` within ``max_ops`` operations and MAX_TXN_BYTES (an op larger
    than MAX_TXN_BYTES goes alone: etcd decides whether it fits its request limit)."""
    batch: list[Any] = []
    size = 0
    for op in ops:
        op_size = op.ByteSize()
        if batch and (len(batch) >= max_ops or size + op_size > MAX_TXN_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(op)
        size += op_size
    if batch:
        yield batch


def _log_retry(state: tenacity.RetryCallState) -> None:
    """One warning when a call starts failing; the retries after it are debug noise."""
    exc = state.outcome.exception() if state.outcome else None
    log.log(
        logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
        "etcd call failed, retrying",
        extra={"attempt": state.attempt_number, "error": str(exc) or type(exc).__name__},
    )
