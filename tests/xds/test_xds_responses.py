"""Pure logic of the front-end: pre-encoded responses, versions and the shared response cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest
import xds_helpers as h
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from navigator import keys, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import resources, wire

NODE = resources.NodeInfo(id="n1", app="shop", k8s_cluster="c1", region="r1", zone="z1")


@dataclasses.dataclass
class FakeSource:
    """A ConfigSource without etcd."""

    apps: dict[tuple[str, str], cache_mod.AppEntry]
    blobs: dict[tuple[str, str], cache_mod.Encoded]
    loaded: bool = True
    ready: bool = True

    def app(self, app: str, cluster: str) -> cache_mod.AppEntry | None:
        return self.apps.get((app, cluster))

    def eds(self, name: str, variant: str) -> cache_mod.Encoded | None:
        return self.blobs.get((name, variant))

    def zone_view(self, zone: str) -> Mapping[str, cache_mod.Encoded]:
        return cache_mod.ZoneView(self, zone)  # type: ignore[arg-type]

    def history(self) -> dict[Hashable, Any]:
        return {}

    def eds_epoch(self) -> int:
        return 0

    def eds_changed_since(self, epoch: int) -> Sequence[str] | None:
        return None

    def subscribe(self) -> cache_mod.Subscription:
        raise NotImplementedError

    def memo(self) -> dict[Hashable, object]:
        return {}


def source(*services: h.Service, app: str = "shop") -> FakeSource:
    entry = cache_mod.encode_app(h.app_snapshot(app, "c1", services))
    blobs = {
        (s.name, keys.DEFAULT_VARIANT): cache_mod.encode_eds(
            s.name, h.assignment(s.name, ("10.0.0.1", s.port)).SerializeToString()
        )
        for s in services
    }
    return FakeSource(apps={(app, "c1"): entry}, blobs=blobs)


def test_pre_encoded_response_decodes_to_the_equal_message() -> None:
    clusters = [h.cluster("a"), h.cluster("b")]
    items = [
        cache_mod.Encoded(c.name, "x", wire.resource_entry(snapshot.CLUSTER, c.SerializeToString()))
        for c in clusters
    ]
    body = resources.ResponseCache().body(snapshot.CLUSTER, "v1", items)
    decoded = discovery_pb2.DiscoveryResponse.FromString(wire.with_nonce(body, "7"))
    expected = discovery_pb2.DiscoveryResponse(
        version_info="v1",
        type_url=snapshot.CLUSTER,
        nonce="7",
        resources=[
            any_pb2.Any(type_url=snapshot.CLUSTER, value=c.SerializeToString()) for c in clusters
        ],
    )
    assert decoded == expected


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**35], ids=str)
def test_varint_matches_protobuf(value: int) -> None:
    if 0 < value < 2**16:  # NOTE: proto3 does not serialize an empty string
        msg = discovery_pb2.DiscoveryResponse(version_info="x" * value)
        assert wire.field(1, b"x" * value) == msg.SerializeToString()
    raw = wire.varint(value)
    decoded, shift = 0, 0
    for byte in raw:
        decoded |= (byte & 0x7F) << shift
        shift += 7
    assert decoded == value


def test_versions_depend_on_content_only() -> None:
    one, two = h.Service("one", 1), h.Service("two", 2)
    a = resources.build(source(one, two), NODE, snapshot.CLUSTER, frozenset())
    b = resources.build(source(two, one), NODE, snapshot.CLUSTER, frozenset())
    c = resources.build(source(one), NODE, snapshot.CLUSTER, frozenset())
    assert a is not None and b is not None and c is not None
    assert a[0] == b[0] != c[0]
    assert [i.name for i in a[1]] == ["one", "two"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param({"one"}, ["one"], id="requested"),
        pytest.param({"one", "nope"}, ["one"], id="unknown-name-omitted"),
        pytest.param({"two"}, [], id="not-in-app-endpoints"),
    ],
)
def test_eds_serves_only_requested_names_of_the_app(names: set[str], expected: list[str]) -> None:
    src = source(h.Service("one", 1))
    src.blobs[("two", keys.DEFAULT_VARIANT)] = cache_mod.encode_eds("two", b"")
    built = resources.build(src, NODE, snapshot.ENDPOINT, frozenset(names))
    assert built is not None
    assert [i.name for i in built[1]] == expected


def test_nothing_is_served_before_the_first_listing() -> None:
    src = FakeSource(apps={}, blobs={}, loaded=False)
    assert resources.build(src, NODE, snapshot.CLUSTER, frozenset()) is None
    src.loaded = True
    assert resources.build(src, NODE, snapshot.CLUSTER, frozenset()) == (
        snapshot.version_of([]),
        [],
    )


def test_response_bodies_are_shared_and_bounded() -> None:
    cache = resources.ResponseCache(max_entries=2)
    built = resources.build(source(h.Service("one", 1)), NODE, snapshot.CLUSTER, frozenset())
    assert built is not None
    first = cache.body(snapshot.CLUSTER, built[0], built[1])
    assert cache.body(snapshot.CLUSTER, built[0], built[1]) is first
    assert (cache.hits, cache.misses) == (1, 1)
    cache.body(snapshot.LISTENER, "v2", [])
    cache.body(snapshot.LISTENER, "v3", [])
    assert cache.body(snapshot.CLUSTER, built[0], built[1]) is not first
    assert cache.misses == 4
