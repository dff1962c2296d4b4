"""Fuzz target: xDS requests from arbitrary bytes, as the front-end handles them.

What ``navigator.xds.server`` does with a stream, without gRPC: the first request's node
becomes a ``NodeInfo`` (``ValueError``: the stream is refused), the node is placed, a SotW or
Delta stream is made over a real ``SnapshotCache`` (loaded with what the translators make of
the lab's manifests), and every request goes to ``on_request``, each followed by ``respond``.

Input (``harness`` frames): flags bit 0 = Delta, bits 1-3 = the per-type service (0: ADS,
1-4: CDS, EDS, LDS, RDS). Each frame is a serialized (Delta)DiscoveryRequest; its control
byte helps the fuzzer reach deep states, as a real sidecar would:

- bits 0-2: 1-4 override ``type_url`` with CDS, EDS, LDS, RDS (other values keep it);
- bit 3: answer the last response of that type (its nonce, and in SotW its version): ACK;
- bit 4: with bit 3, answer with ``error_detail``: NACK;
- bit 5: no ``respond`` after this request.

Bytes that do not decode as the request message end the stream (gRPC fails the call).

Checked on every input, besides "no exception": each response decodes, is of a type the
stream serves, has a fresh nonce; a type never has two responses out unanswered (flow
control); a response of a named type (EDS, RDS) carries only subscribed names.

Run: ``python fuzz/fuzz_xds.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/xds`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from typing import Any

import harness
import yaml
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

with harness.instrumented(__name__):
    from coordinator import etcd as etcd_mod
    from navigator import keys, model, snapshot
    from navigator.watcher import convert
    from navigator.xds import cache as cache_mod
    from navigator.xds import resources, streams
    from navigator.xds import server as xds_server
    from shards import translate

TYPES = snapshot.TYPE_URLS
"""CDS, EDS, LDS, RDS: the order of the control byte's type override and of the flags."""

NAMED = frozenset({snapshot.ENDPOINT, snapshot.ROUTE})
"""Types whose subscriptions name resources (SotW and Delta answer only for those names)."""

ACK = 0x08
NACK = 0x10
NO_RESPOND = 0x20


class _Etcd:
    """The one call the cache's catch-up check (a resuming sidecar) makes of etcd."""

    def __init__(self, revision: int) -> None:
        self.revision = revision

    async def latest_mod_revision(self, prefix: str) -> tuple[int, int]:
        return self.revision, self.revision


def mesh_listing(options: translate.Options | None = None) -> etcd_mod.Listing:
    """What etcd's ``snapshots/`` holds for the lab's manifests (both clusters)."""
    objects: list[model.Object] = []
    for cluster in ("east", "west"):
        for path in sorted((harness.EXAMPLES / cluster).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    kind = model.Kind(harness.K8S_KINDS[doc["kind"]])
                    objects.append(convert.convert(model.ClusterName(cluster), kind, doc))
    clusters = [model.ClusterName("east"), model.ClusterName("west")]
    result = translate.translate(objects, clusters, options)
    values: dict[str, bytes] = {}
    for (app, k8s), snap in result.apps.items():
        values[keys.app_snapshot_key(app, k8s)] = snapshot.encode_app(snap)
    for (name, variant), body in result.endpoints.items():
        values[keys.eds_key(name, variant)] = body
    for cluster in clusters:
        nodes = {
            o.name: [o.region, o.zone]
            for o in objects
            if isinstance(o, model.Node) and o.cluster == cluster
        }
        values[keys.localities_key(cluster)] = json.dumps({"nodes": nodes}).encode()
    return etcd_mod.Listing(1, {k: etcd_mod.KeyValue(k, v, 1) for k, v in values.items()})


def make_source() -> cache_mod.SnapshotCache:
    cache = cache_mod.SnapshotCache(_Etcd(1))  # type: ignore[arg-type]
    cache.load(mesh_listing())
    return cache


@dataclasses.dataclass
class Transcript:
    """What one stream did: for tests to assert more than "no exception"."""

    refused: bool = False
    node: resources.NodeInfo | None = None
    requests: int = 0
    responses: list[Any] = dataclasses.field(default_factory=list)
    """Decoded responses, in the order sent."""


class Checker:
    """The invariants of one stream, checked as it goes."""

    def __init__(self, delta: bool, only_type: str | None) -> None:
        self.delta = delta
        self.only_type = only_type
        self.outstanding: dict[str, str] = {}
        self.last: dict[str, Any] = {}
        self.names: dict[str, set[str]] = {}
        self.nonces: set[str] = set()

    def request(self, req: Any) -> None:
        type_url = req.type_url
        if type_url not in snapshot.SHORT_NAMES or self.only_type not in (None, type_url):
            return
        if self.outstanding.get(type_url) == req.response_nonce:
            del self.outstanding[type_url]
        if self.delta:
            names = self.names.setdefault(type_url, set())
            names |= set(req.resource_names_subscribe) - {"*"}
            names -= set(req.resource_names_unsubscribe)
        else:
            self.names[type_url] = set(req.resource_names)

    def response(self, body: bytes) -> Any:
        cls = (
            discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        )
        resp = cls.FromString(body)
        type_url = resp.type_url
        assert type_url in snapshot.SHORT_NAMES, f"response of unknown type {type_url!r}"
        assert self.only_type in (None, type_url), f"{type_url} on a {self.only_type} stream"
        assert type_url not in self.outstanding, (
            f"two {type_url} responses out unanswered (nonces "
            f"{self.outstanding[type_url]!r}, {resp.nonce!r})"
        )
        assert resp.nonce and resp.nonce not in self.nonces, f"nonce {resp.nonce!r} reused"
        self.nonces.add(resp.nonce)
        self.outstanding[type_url] = resp.nonce
        self.last[type_url] = resp
        if type_url in NAMED:
            carried = set(_names(resp, self.delta))
            if self.delta:
                carried |= set(resp.removed_resources)
            extra = carried - self.names.get(type_url, set())
            assert not extra, f"{type_url} response carries unsubscribed {sorted(extra)}"
        return resp


def _names(resp: Any, delta: bool) -> list[str]:
    if delta:
        return [r.name for r in resp.resources]
    out = []
    for res in resp.resources:
        if resp.type_url == snapshot.ENDPOINT:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(res.value).cluster_name)
        else:
            out.append(route_pb2.RouteConfiguration.FromString(res.value).name)
    return out


class Front:
    """One front-end's stream handling over a loaded cache (shared by every input)."""

    def __init__(self) -> None:
        self.source = make_source()
        self.ads = xds_server.AdsServer(self.source)

    async def drive(
        self, *, delta: bool, only_type: str | None, frames: list[harness.Frame]
    ) -> Transcript:
        out = Transcript()
        cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        checker = Checker(delta, only_type)
        stream: streams.Stream[Any] | None = None
        try:
            for control, payload in frames:
                try:
                    req = cls.FromString(payload)
                except message.DecodeError:
                    break  # NOTE: gRPC fails the call on a message it cannot deserialize.
                _steer(req, control, checker, delta)
                out.requests += 1
                if stream is None:
                    try:
                        node = resources.NodeInfo.from_proto(req.node)
                    except ValueError:
                        out.refused = True
                        return out
                    out.node = node = resources.placed(self.source, node)
                    variant = streams.DeltaStream if delta else streams.SotwStream
                    stream = variant(self.ads, node, self.source.subscribe(), only_type=only_type)
                checker.request(req)
                stream.on_request(req)
                if not control & NO_RESPOND:
                    self._respond(stream, checker, out)
            if stream is not None:
                # NOTE: a resuming sidecar's responses wait for the catch-up check (a task).
                for _ in range(3):
                    await asyncio.sleep(0)
                    self._respond(stream, checker, out)
        finally:
            if stream is not None:
                stream.sub.close()
        return out

    @staticmethod
    def _respond(stream: streams.Stream[Any], checker: Checker, out: Transcript) -> None:
        for body in stream.respond(None):
            out.responses.append(checker.response(body))


def _steer(req: Any, control: int, checker: Checker, delta: bool) -> None:
    pick = control & 0x07
    if 1 <= pick <= len(TYPES):
        req.type_url = TYPES[pick - 1]
    last = checker.last.get(req.type_url)
    if control & ACK and last is not None:
        req.response_nonce = last.nonce
        if not delta:
            req.version_info = last.version_info
        if control & NACK:
            req.error_detail.code = 3
            req.error_detail.message = "fuzz: rejected"


# --- structure-aware mutation (see harness) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Names, versions and node identities the loaded mesh knows, for the mutator."""

    names: tuple[str, ...]
    versions: tuple[str, ...]
    hashes: tuple[tuple[str, str], ...]
    """(name, resource hash) pairs."""


def vocabulary(source: cache_mod.SnapshotCache) -> Vocabulary:
    names: set[str] = {"*", "", "missing/name:1"}
    versions: set[str] = {"", resources.EMPTY_VERSION}
    hashes: set[tuple[str, str]] = set()
    for app, k8s in source.apps():
        entry = source.app(app, k8s)
        assert entry is not None
        versions |= set(entry.versions.values())
        names |= entry.endpoints
        for type_url in TYPES:
            for name, encoded in entry.of_type(type_url).items():
                names.add(name)
                hashes.add((name, encoded.hash))
    return Vocabulary(tuple(sorted(names)), tuple(sorted(versions)), tuple(sorted(hashes)))


NODES = (
    ("web-east-0", "web", "east", "r1-a", ""),
    ("web-east-1", "web", "east", "", "east-node-1"),
    ("checkout-west-0", "checkout", "west", "r1-b", ""),
    ("gw-0", "gateway:edge:public", "east", "", ""),
    ("nobody-0", "nobody", "north", "", ""),
    ("", "web", "east", "", ""),
)
"""(id, app, k8s_cluster, zone, node_name) of nodes the mutator may put in a request."""


def mutate_request(req: Any, rng: Any, delta: bool, vocab: Vocabulary) -> None:
    action = rng.randrange(7)
    if action == 0:
        req.type_url = rng.choice((*TYPES, "", "type.googleapis.com/envoy.Unknown"))
    elif action == 1:
        field = (
            rng.choice((req.resource_names_subscribe, req.resource_names_unsubscribe))
            if delta
            else req.resource_names
        )
        if field and rng.random() < 0.3:
            del field[rng.randrange(len(field))]
        else:
            field.append(rng.choice(vocab.names))
    elif action == 2 and delta:
        name, digest = rng.choice(vocab.hashes)
        req.initial_resource_versions[name] = rng.choice((digest, "stale"))
    elif action == 2:
        req.version_info = rng.choice(vocab.versions)
    elif action == 3:
        req.response_nonce = rng.choice(("", "1", "2", "3", "4", "5", "8", "99"))
    elif action == 4:
        if req.HasField("error_detail"):
            req.ClearField("error_detail")
        else:
            req.error_detail.code = 3
            req.error_detail.message = "rejected"
    else:
        node_id, app, k8s, zone, node_name = rng.choice(NODES)
        req.node.id = node_id
        req.node.locality.zone = zone
        req.node.metadata.update({"app": app, "k8s_cluster": k8s, "node_name": node_name})


def mutator() -> Any:
    import random

    import atheris

    vocab = vocabulary(front().source)

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        flags, frames = harness.split_frames(data)
        if not frames or rng.random() < 0.2:
            return bytes(atheris.Mutate(data, max_size))
        delta, _ = decode_flags(flags)
        cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        i = rng.randrange(len(frames))
        control, payload = frames[i]
        action = rng.randrange(6)
        if action == 0:
            frames.insert(rng.randrange(len(frames) + 1), frames[i])
        elif action == 1 and len(frames) > 1:
            del frames[i]
        elif action == 2:
            frames[i] = (rng.randrange(64), payload)
        elif action == 3:
            flags = rng.randrange(16)
        else:
            try:
                req = cls.FromString(payload)
            except message.DecodeError:
                req = cls()
            for _ in range(rng.randrange(1, 4)):
                mutate_request(req, rng, delta, vocab)
            frames[i] = (control, req.SerializeToString())
        out = harness.join_frames(flags, frames)
        return out if len(out) <= max_size else bytes(atheris.Mutate(data, max_size))

    return mutate


@functools.cache
def front() -> Front:
    return Front()


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    """The fuzzer's one event loop (a front-end has one)."""
    return asyncio.new_event_loop()


def decode_flags(flags: int) -> tuple[bool, str | None]:
    pick = (flags >> 1) & 0x07
    return bool(flags & 1), TYPES[pick - 1] if 1 <= pick <= len(TYPES) else None


def test_one_input(data: bytes) -> None:
    flags, frames = harness.split_frames(data)
    delta, only_type = decode_flags(flags)
    _loop().run_until_complete(front().drive(delta=delta, only_type=only_type, frames=frames))


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    harness.run(test_one_input, mutator=mutator())
