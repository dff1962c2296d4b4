"""The protocol state of one xDS stream, State of the World or Delta; no I/O.

``server`` reads requests into ``on_request`` and, when woken, sends what ``respond`` returns.
A stream serves every type (ADS) or one (a per-type CDS/EDS/LDS/RDS stream). Responses are
assembled from bytes the cache encoded once, and whole bodies are shared between streams
(``resources.ResponseCache``): nothing is serialized per sidecar but the nonce.

Rules kept here (see LAB.md, "Envoy's xDS behaviour", and the xDS protocol):

- make-before-break: one ``respond`` sends updates in the order CDS, EDS, LDS, RDS, then the
  removals in the same order. A SotW wildcard response that drops clusters or listeners is
  sent first with the dropped ones still in it and again without them at the end, so no
  listener or route is left pointing at a cluster already gone;
- warming: a changed cluster's endpoints are sent again after it (Envoy warms an updated EDS
  cluster until it gets its assignment);
- per-type versions (content hashes, the same in both variants and on every front-end) and
  per-stream nonces;
- SotW: ``resource_names`` compared on EVERY request, stale nonce or not (Envoy re-sends its
  EDS request with the previous nonce and a new name list when CDS adds a cluster); a stale
  nonce is otherwise ignored; ACK = latest nonce without ``error_detail``;
- NACK (``error_detail``): recorded (``Nack``, log, metric, status) and never re-sent: SotW
  sends again only when the content version changes, Delta never re-sends a resource at the
  hash that was rejected, and puts back what the sidecar still holds;
- unknown resources: SotW leaves them out of the response (non-wildcard types); Delta names
  them once in ``removed_resources``, as the protocol says for a resource that does not exist;
- Delta honours ``initial_resource_versions``: a sidecar reconnecting with resources at the
  hashes we have is sent nothing;
- never backwards: a sidecar that resumes with versions this front-end does not know may hold
  newer ones (from a front-end ahead of this one); it gets nothing until this front-end has
  checked that it holds everything etcd held after the stream opened.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

import prometheus_client

from navigator import keys, model, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import resources, wire

log = logging.getLogger(__name__)

SOTW = "sotw"
DELTA = "delta"

STREAMS = prometheus_client.Gauge("navigator_xds_streams", "Connected xDS streams", ["variant"])
RESPONSES = prometheus_client.Counter(
    "navigator_xds_responses_total", "xDS responses sent (pushes)", ["type", "variant"]
)
RESOURCES_SENT = prometheus_client.Counter(
    "navigator_xds_resources_sent_total",
    "Resources sent in xDS responses (a Delta failover that re-sends nothing adds none)",
    ["type", "variant"],
)
NACKS = prometheus_client.Counter(
    "navigator_xds_nacks_total", "xDS responses rejected by Envoy", ["type"]
)
SENT_BYTES = prometheus_client.Counter(
    "navigator_xds_sent_bytes_total", "Bytes of xDS responses sent"
)
HELD = prometheus_client.Counter(
    "navigator_xds_resume_held_total",
    "Responses held back from a resuming sidecar until this front-end caught up with etcd",
    ["type"],
)
ACK_LATENCY = prometheus_client.Histogram(
    "navigator_xds_ack_latency_seconds",
    "Time from sending a response to its ACK",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
PUSH_LATENCY = prometheus_client.Histogram(
    "navigator_xds_push_latency_seconds",
    "Time from the front-end receiving a snapshot change from etcd (its watch event) to the "
    "sidecar's ACK of the response it caused",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

_ABSENT = ""
"""In a Delta stream's ``known``: the sidecar was told this name does not exist."""


@dataclasses.dataclass(frozen=True, slots=True)
class Nack:
    node_id: str
    app: str
    type_url: str
    rejected_version: str
    accepted_version: str
    message: str


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


class Context(Protocol):
    """What a stream needs of its front-end."""

    @property
    def source(self) -> cache_mod.ConfigSource: ...

    @property
    def responses(self) -> resources.ResponseCache: ...

    def record_nack(self, nack: Nack) -> None: ...

    def touched(self, stream: Stream[Any]) -> None:
        """The stream's status (sent, acknowledged, rejected) changed."""
        ...


class TypeStatus:
    """Per type: the versions sent, acknowledged and rejected (for the status records)."""

    __slots__ = ("acked", "error", "nacked", "sent")

    def __init__(self) -> None:
        self.sent = ""
        self.acked = ""
        self.nacked = ""
        self.error = ""

    def as_dict(self) -> dict[str, str]:
        out = {"sent": self.sent, "acked": self.acked}
        if self.nacked:
            out["nacked"] = self.nacked
            out["error"] = self.error
        return out


T = TypeVar("T")
"""A variant's per-type state."""


class Stream(Generic[T]):
    """What both variants share: identity, subscription keys, the round, NACK records."""

    variant = ""

    def __init__(
        self,
        ctx: Context,
        node: resources.NodeInfo,
        sub: cache_mod.Subscription,
        *,
        only_type: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.node = node
        self.sub = sub
        self.types: dict[str, T] = {}
        self._warm: set[str] = set()
        """Clusters whose endpoints are to be sent again (they changed: Envoy warms them)."""
        self.only_type = only_type
        """A per-type (non-ADS) stream serves this type only."""
        self.closed = False
        self.opened_at = time.monotonic()
        self.connected_at = time.time()
        self.status: dict[str, TypeStatus] = {}
        self.pushes = 0
        """Responses this stream has been given to send."""
        self._deferred: dict[str, float | None] = {}
        """Types with something due while a response was unanswered → the earliest cause."""
        self._nonces = 0
        self._app_key = keys.app_snapshot_key(
            model.AppName(node.app), model.ClusterName(node.k8s_cluster)
        )
        self._default_key = keys.app_snapshot_key(
            keys.DEFAULT_APP, model.ClusterName(node.k8s_cluster)
        )
        self._unplaced = bool(node.node_name) and not node.zone
        """It names its node, whose locality was not published yet (``_place``)."""
        self._update_keys()

    # -- subclass hooks ---------------------------------------------------------------------

    def _eds_names(self) -> frozenset[str]:
        raise NotImplementedError

    def _respond_type(
        self, type_url: str, *, removals: bool, cause_at: float | None, dry_run: bool = False
    ) -> tuple[bytes, int] | None:
        """(response, resources in it) due for ``type_url`` in this phase, or None.

        ``dry_run``: only whether one is due (``(b"", 0)``); nothing is recorded as sent.
        """
        raise NotImplementedError

    def on_request(self, req: Any) -> None:
        raise NotImplementedError

    def _rewarm(self, names: set[str]) -> None:
        """Clusters that changed: send their endpoints again (Envoy warms them)."""
        raise NotImplementedError

    def _awaiting(self, type_url: str) -> bool:
        """A response of ``type_url`` is out and not yet acknowledged or rejected."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    def serves(self, type_url: str) -> bool:
        if type_url not in snapshot.SHORT_NAMES:
            return False
        return self.only_type is None or type_url == self.only_type

    def _update_keys(self) -> None:
        deps = {self._app_key, self._default_key}
        for name in self._eds_names():
            deps.add(keys.eds_key(name, keys.DEFAULT_VARIANT))
            if self.node.zone:
                deps.add(keys.eds_key(name, self.node.zone))
        if self._unplaced:
            deps.add(keys.localities_key(model.ClusterName(self.node.k8s_cluster)))
        self.sub.set_keys(deps)

    def _place(self) -> None:
        """Places a node that names its Kubernetes node once that node's locality is
        published: a new node's pods (or a whole mesh starting cold) can connect before the
        translators publish it, and would otherwise keep no zone for the stream's life."""
        if not self._unplaced:
            return
        node = resources.placed(self.ctx.source, self.node)
        if not node.zone:
            return
        self.node, self._unplaced = node, False
        self._update_keys()
        log.info(
            "sidecar placed by its node",
            extra={"node": node.id, "node_name": node.node_name, "zone": node.zone},
        )

    def _next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    def _status(self, type_url: str) -> TypeStatus:
        found = self.status.get(type_url)
        if found is None:
            found = self.status[type_url] = TypeStatus()
        return found

    def respond(self, cause_at: float | None) -> list[bytes]:
        """Every response due now, in make-before-break order (updates, then removals).

        ``cause_at``: when the cache received the change that woke the stream (monotonic),
        None when a request did; push latency is measured from it to the ACK.

        NOTE: flow control. gRPC buffers whatever a handler yields, whether the peer reads or
        not, so the transport gives no back-pressure. The protocol's own does: a type with a
        response not yet acknowledged (or rejected) gets nothing more until it is; what
        changed meanwhile is sent, as it is then, when the answer wakes the stream. A sidecar
        that stops reading therefore costs one response per type, never a queue.
        """
        self._place()
        out: list[bytes] = []
        order = [t for t in snapshot.TYPE_URLS if t in self.types]
        blocked = False
        for removals in (False, True):
            for type_url in order:
                if blocked or self._awaiting(type_url):
                    # NOTE: what is due waits for the answer; so does everything after it in
                    # the order (make-before-break), and every removal.
                    if self._respond_type(type_url, removals=removals, cause_at=None, dry_run=True):
                        earlier = self._deferred.get(type_url)
                        self._deferred[type_url] = _earliest(earlier, cause_at)
                        blocked = True
                    continue
                cause = _earliest(self._deferred.pop(type_url, None), cause_at)
                found = self._respond_type(type_url, removals=removals, cause_at=cause)
                if found is None:
                    continue
                body, count = found
                short = snapshot.SHORT_NAMES[type_url]
                RESPONSES.labels(short, self.variant).inc()
                RESOURCES_SENT.labels(short, self.variant).inc(count)
                SENT_BYTES.inc(len(body))
                out.append(body)
        if out:
            self.pushes += len(out)
            self.ctx.touched(self)
        return out

    def _answered_type(self, type_url: str) -> None:
        """The outstanding response of ``type_url`` was answered: send what waited for it."""
        if self._deferred:
            self.sub.changed.set()

    def _nack(self, type_url: str, rejected: str, accepted: str, message: str) -> None:
        short = snapshot.SHORT_NAMES[type_url]
        NACKS.labels(short).inc()
        nack = Nack(
            node_id=self.node.id,
            app=self.node.app,
            type_url=type_url,
            rejected_version=rejected,
            accepted_version=accepted,
            message=message,
        )
        self.ctx.record_nack(nack)
        st = self._status(type_url)
        st.nacked, st.error = rejected, message
        self.ctx.touched(self)
        # NOTE: the message holds a random token: log it, never match on it.
        log.warning(
            "envoy rejected config",
            extra={
                "node": self.node.id,
                "app": self.node.app,
                "type": short,
                "variant": self.variant,
                "rejected_version": rejected,
                "accepted_version": accepted,
                "error": message,
            },
        )

    def _acked(self, type_url: str, version: str, sent_at: float, cause_at: float | None) -> None:
        now = time.monotonic()
        short = snapshot.SHORT_NAMES[type_url]
        ACK_LATENCY.labels(short).observe(now - sent_at)
        if cause_at is not None:
            PUSH_LATENCY.labels(short).observe(now - cause_at)
        st = self._status(type_url)
        st.acked = version
        if st.nacked and st.nacked != version:
            # NOTE: a newer version was accepted: the rejection is history (still counted).
            st.nacked = st.error = ""
        self.ctx.touched(self)

    def _hold(self, type_url: str) -> bool:
        """A resuming sidecar waits until this front-end is known to be current."""
        if self.ctx.source.caught_up(self.opened_at):
            return False
        HELD.labels(snapshot.SHORT_NAMES[type_url]).inc()
        return True

    def record(self) -> dict[str, Any]:
        """This stream's part of the sidecar's status record."""
        return {
            snapshot.SHORT_NAMES[t]: {**self.status[t].as_dict(), "variant": self.variant}
            for t in self.status
        }


class _SotwType:
    """What a SotW stream subscribed to and last sent, for one type URL."""

    __slots__ = (
        "cause_at",
        "force",
        "held",
        "names",
        "nonce",
        "resumed",
        "sent",
        "sent_at",
        "sent_version",
        "transitional",
        "waiting_ack",
    )

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.sent_version = ""
        self.nonce = ""
        self.force = True
        """Send even if the version did not change (new or changed subscription, warming)."""
        self.resumed = False
        """``sent_version`` is what the sidecar said it has, not something we sent."""
        self.sent: Mapping[str, cache_mod.Encoded] | None = None
        """A wildcard type's last response, by name (None: not known, e.g. resumed); mostly
        the app entry's own mapping, shared, not a copy."""
        self.held: Mapping[str, cache_mod.Encoded] | None = None
        """A named type's (EDS, RDS) resources the sidecar holds once a full response was
        sent (None: not known): the mapping ``resources.desired`` gave, shared by every
        stream of the app and zone, not a copy."""
        self.sent_at = 0.0
        self.cause_at: float | None = None
        self.waiting_ack = False
        self.transitional = False
        """The last response kept what is to be removed: the removal phase sends the rest."""


_NAMES: collections.OrderedDict[frozenset[str], frozenset[str]] = collections.OrderedDict()
_NAMES_MAX = 65536


def _shared_names(names: frozenset[str]) -> frozenset[str]:
    """One object for every equal subscription: the sidecars of an app subscribe to the same
    names, and 5,000 streams of 40 names each would otherwise hold 5,000 copies (LRU-bound).
    """
    found = _NAMES.get(names)
    if found is not None:
        _NAMES.move_to_end(names)
        return found
    _NAMES[names] = names
    if len(_NAMES) > _NAMES_MAX:
        _NAMES.popitem(last=False)
    return names


class SotwStream(Stream[_SotwType]):
    variant = SOTW

    def _eds_names(self) -> frozenset[str]:
        eds = self.types.get(snapshot.ENDPOINT)
        return eds.names if eds is not None else frozenset()

    def _rewarm(self, names: set[str]) -> None:
        eds = self.types.get(snapshot.ENDPOINT)
        if eds is not None and names & eds.names:
            eds.force = True

    def _awaiting(self, type_url: str) -> bool:
        st = self.types.get(type_url)
        return st is not None and st.waiting_ack

    def _subscribe(self, type_url: str, st: _SotwType, names: frozenset[str]) -> None:
        st.names = names
        st.force = True
        if type_url == snapshot.ENDPOINT:
            self._update_keys()
        self.sub.changed.set()

    def on_request(self, req: Any) -> None:
        type_url: str = req.type_url
        if not self.serves(type_url):
            log.debug("request for an unserved type ignored", extra={"type_url": type_url})
            return
        names = (
            frozenset()
            if type_url in resources.WILDCARD_TYPES
            else _shared_names(frozenset(req.resource_names))
        )
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = _SotwType(names)
            if req.version_info and not req.response_nonce:
                # NOTE: Envoy resuming on a new stream (or another front-end) says what it
                # has; versions are content hashes, so equal means it needs nothing.
                st.sent_version = req.version_info
                st.force = False
                st.resumed = True
                self._status(type_url).acked = req.version_info
            if type_url == snapshot.ENDPOINT:
                self._update_keys()
            self.sub.changed.set()
            return
        if req.response_nonce != st.nonce:
            # NOTE: stale nonce: only a changed subscription counts (EDS re-request after CDS).
            if names != st.names:
                self._subscribe(type_url, st, names)
            return
        if req.HasField("error_detail"):
            # NOTE: not re-sent: the next response goes out only when the content changes.
            # It carries the whole set (what the sidecar holds is no longer known), so an
            # assignment that came in the rejected response is not left out of it.
            self._nack(type_url, st.sent_version, req.version_info, req.error_detail.message)
            st.held = None
        elif st.waiting_ack:
            self._acked(type_url, st.sent_version, st.sent_at, st.cause_at)
        st.waiting_ack = False
        self._answered_type(type_url)
        if names != st.names:
            self._subscribe(type_url, st, names)

    def _respond_type(
        self, type_url: str, *, removals: bool, cause_at: float | None, dry_run: bool = False
    ) -> tuple[bytes, int] | None:
        st = self.types[type_url]
        if removals and not st.transitional:
            # NOTE: in SotW only a wildcard response that kept what goes has removals left.
            return None
        found = resources.desired(self.ctx.source, self.node, type_url, st.names)
        if found is None:
            return None
        version, items = found
        if items is st.sent and version == st.sent_version and not st.force:
            # NOTE: the app entry's own mapping, unchanged (e.g. only endpoints changed): the
            # common case on a push, decided without looking at the resources.
            return None
        target: Mapping[str, cache_mod.Encoded] = items
        if not removals and st.sent is not None and st.sent is not items:
            # NOTE: make-before-break: what is dropped stays until the other types are sent.
            kept = {n: e for n, e in st.sent.items() if n not in items}
            st.transitional = bool(kept)
            if kept:
                target = dict(sorted({**items, **kept}.items()))
                version = snapshot.version_of((e.name, e.hash) for e in target.values())
        if version == st.sent_version and not st.force:
            st.resumed = False
            return None
        if st.resumed and self._hold(type_url):
            return None
        if dry_run:
            return b"", 0
        st.resumed = False
        if type_url == snapshot.CLUSTER and st.sent is not None:
            before = st.sent
            changed = {n for n, e in target.items() if (b := before.get(n)) and b.hash != e.hash}
            if changed:
                self._rewarm(changed)
        send = list(target.values())
        if type_url not in resources.WILDCARD_TYPES:
            # NOTE: SotW for named types (EDS, RDS) lets a response carry only what changed;
            # Envoy updates the watches of the resources present and keeps the others (as
            # Istio's incremental EDS relies on). One endpoint change then sends one
            # assignment, not every one the sidecar watches. A forced response (a new or
            # changed subscription, a cluster re-warming) or an unknown state sends them all.
            if st.held is not None and not st.force:
                held = st.held
                send = [e for e in send if (h := held.get(e.name)) is None or h.hash != e.hash]
            st.held = target
        if len(send) == len(target):
            body = self.ctx.responses.body(type_url, version, send)
        else:
            body = self.ctx.responses.partial_body(type_url, version, send)
        st.nonce = self._next_nonce()
        st.sent_version = version
        st.force = False
        st.sent_at = time.monotonic()
        st.cause_at = cause_at
        st.waiting_ack = True
        if type_url in resources.WILDCARD_TYPES:
            st.sent = target
        st.transitional = target is not items
        self._status(type_url).sent = version
        return wire.with_nonce(body, st.nonce), len(send)


@dataclasses.dataclass(frozen=True, slots=True)
class _DeltaPending:
    """A Delta response out: what to put back if it is rejected, what to time if not."""

    nonce: str
    version: str
    previous: dict[str, str | None]
    """What ``known`` held, before this response, for each name it changed."""
    sent: dict[str, str]
    """Name → hash of each resource it carries."""
    sent_at: float
    cause_at: float | None


class _DeltaType:
    """What a Delta stream subscribed to and what the sidecar holds, for one type URL."""

    __slots__ = (
        "holding",
        "known",
        "names",
        "pending",
        "rejected",
        "resumed",
        "synced_with",
        "wildcard",
    )

    def __init__(self, wildcard: bool) -> None:
        self.wildcard = wildcard
        self.names: set[str] = set()
        self.known: dict[str, str] = {}
        """Name → hash the sidecar holds (``_ABSENT``: told it does not exist)."""
        self.rejected: dict[str, str] = {}
        """Name → hash the sidecar rejected: never sent again at that hash."""
        self.pending: _DeltaPending | None = None
        """The one response out and not yet answered (flow control: one per type)."""
        self.resumed = False
        self.holding = False
        """Updates were held back in this round (resumed sidecar, front-end not checked)."""
        self.synced_with: Mapping[str, cache_mod.Encoded] | None = None
        """The desired mapping ``known`` was last found equal to; the cache's objects are
        replaced on every change, so the same object again means nothing to do."""


class DeltaStream(Stream[_DeltaType]):
    variant = DELTA

    def _eds_names(self) -> frozenset[str]:
        eds = self.types.get(snapshot.ENDPOINT)
        return frozenset(eds.names) if eds is not None else frozenset()

    def _rewarm(self, names: set[str]) -> None:
        self._warm |= names

    def _awaiting(self, type_url: str) -> bool:
        st = self.types.get(type_url)
        return st is not None and bool(st.pending)

    def on_request(self, req: Any) -> None:
        type_url: str = req.type_url
        if not self.serves(type_url):
            log.debug("delta request for an unserved type ignored", extra={"type_url": type_url})
            return
        subscribe = set(req.resource_names_subscribe)
        unsubscribe = set(req.resource_names_unsubscribe)
        st = self.types.get(type_url)
        changed = False
        if st is None:
            wildcard = type_url in resources.WILDCARD_TYPES and (not subscribe or "*" in subscribe)
            st = self.types[type_url] = _DeltaType(wildcard)
            if req.initial_resource_versions:
                st.known = dict(req.initial_resource_versions)
                st.resumed = True
            changed = True
        if "*" in unsubscribe:
            st.wildcard = False
        if "*" in subscribe and type_url in resources.WILDCARD_TYPES:
            st.wildcard = True
        added = subscribe - {"*"} - st.names
        # NOTE: a name in both lists of one request ends unsubscribed, whatever was before
        # (the subscriptions apply first, then the unsubscriptions, as go-control-plane does).
        gone = (unsubscribe - {"*"}) & (st.names | added)
        if added or gone:
            st.names |= added
            st.names -= gone
            for name in gone:
                st.known.pop(name, None)
                st.rejected.pop(name, None)
            st.synced_with = None
            changed = True
        if req.response_nonce:
            self._answered(type_url, st, req)
        if changed:
            if type_url == snapshot.ENDPOINT:
                self._update_keys()
            self.sub.changed.set()

    def _answered(self, type_url: str, st: _DeltaType, req: Any) -> None:
        found = st.pending
        if found is None or found.nonce != req.response_nonce:
            return
        st.pending = None
        self._answered_type(type_url)
        version, previous, sent = found.version, found.previous, found.sent
        if req.HasField("error_detail"):
            # NOTE: Envoy rejected the whole response and keeps what it had: put that back,
            # and remember the rejected hashes so they are not sent again in a loop.
            for name, prior in previous.items():
                if prior is None:
                    st.known.pop(name, None)
                else:
                    st.known[name] = prior
            st.rejected.update(sent)
            st.synced_with = None
            self._nack(type_url, version, self._status(type_url).acked, req.error_detail.message)
            return
        for name in sent:
            st.rejected.pop(name, None)
        self._acked(type_url, version, found.sent_at, found.cause_at)

    def _respond_type(
        self, type_url: str, *, removals: bool, cause_at: float | None, dry_run: bool = False
    ) -> tuple[bytes, int] | None:
        st = self.types[type_url]
        names = frozenset(st.names)
        found = resources.desired(self.ctx.source, self.node, type_url, names)
        if found is None:
            return None
        version, items = found
        warm = self._warm if type_url == snapshot.ENDPOINT else set()
        if items is st.synced_with and not warm:
            # NOTE: the common case on a push (a change elsewhere): decided without looking
            # at the resources.
            return None
        send: list[cache_mod.Encoded] = []
        removed: list[str] = []
        if not removals:
            if not dry_run:
                st.holding = False
            for name, e in items.items():
                if (st.known.get(name) != e.hash or name in warm) and st.rejected.get(
                    name
                ) != e.hash:
                    send.append(e)
        elif st.wildcard:
            removed = [n for n, h in st.known.items() if n not in items and h != _ABSENT]
        else:
            removed = [n for n in sorted(names) if n not in items and st.known.get(n) != _ABSENT]
        if dry_run:
            return (b"", 0) if send or removed else None
        if not send and not removed:
            if removals and not st.holding:
                # NOTE: nothing due in either phase: a resumed sidecar holds what we would send.
                st.resumed = False
                if not st.rejected and not warm:
                    st.synced_with = items
                    status = self._status(type_url)
                    if not st.pending and status.acked != version:
                        # NOTE: it holds exactly this version (e.g. resumed with it).
                        status.sent = status.acked = version
                        self.ctx.touched(self)
            return None
        if st.resumed and self._hold(type_url):
            st.holding = True
            return None
        if warm and not removals:
            self._warm = set()
        st.synced_with = None
        previous: dict[str, str | None] = {}
        for e in send:
            previous[e.name] = st.known.get(e.name)
            st.known[e.name] = e.hash
        if type_url == snapshot.CLUSTER:
            changed = {
                n for n, prior in previous.items() if prior not in (None, _ABSENT, st.known[n])
            }
            if changed:
                self._rewarm(changed)
        for name in removed:
            previous[name] = st.known.get(name)
            if st.wildcard:
                st.known.pop(name, None)
            else:
                st.known[name] = _ABSENT
        key = (
            "delta",
            type_url,
            version,
            tuple((e.name, e.hash) for e in send),
            tuple(removed),
        )
        body = self.ctx.responses.get(
            key,
            lambda: wire.delta_body(
                type_url=type_url,
                version=version,
                resources=[wire.delta_resource(e.name, e.hash, e.entry) for e in send],
                removed=removed,
            ),
        )
        nonce = self._next_nonce()
        st.pending = _DeltaPending(
            nonce=nonce,
            version=version,
            previous=previous,
            sent={e.name: e.hash for e in send},
            sent_at=time.monotonic(),
            cause_at=cause_at,
        )
        self._status(type_url).sent = version
        return wire.with_nonce(body, nonce), len(send)
