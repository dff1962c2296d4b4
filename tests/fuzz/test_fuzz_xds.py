"""xDS requests from arbitrary bytes: properties of the front-end's stream handling, the
regressions fuzzing found, and a bounded run of ``fuzz/fuzz_xds.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_props
import fuzz_xds
import harness
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message
from hypothesis import given
from hypothesis import strategies as st

from navigator import snapshot
from navigator.xds import resources, streams

VOCAB = fuzz_xds.vocabulary(fuzz_xds.front().source)
EDS = snapshot.ENDPOINT
ITEM = "shop/item:8890"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """One event loop for every stream of the module, as a front-end has one."""
    with asyncio.Runner() as runner:
        yield runner


def _drive(
    loop: asyncio.Runner, *, delta: bool, only_type: str | None, frames: list[harness.Frame]
) -> Any:
    return loop.run(fuzz_xds.front().drive(delta=delta, only_type=only_type, frames=frames))


# --- the node --------------------------------------------------------------------------------


@fuzz_props.bounded(300)
@given(st.binary(max_size=200))
def test_a_node_from_arbitrary_bytes_is_refused_only_with_value_error(raw: bytes) -> None:
    try:
        req = discovery_pb2.DiscoveryRequest.FromString(raw)
    except message.DecodeError:
        return
    try:
        node = resources.NodeInfo.from_proto(req.node)
    except ValueError as exc:
        assert "the Envoy node must carry" in str(exc)
        return
    assert node.id and node.app and node.k8s_cluster


METADATA = st.dictionaries(
    st.sampled_from(["app", "k8s_cluster", "admin", "node_name", "other"]),
    fuzz_props.json_values(max_leaves=4),
    max_size=5,
)


@fuzz_props.bounded(200)
@given(
    node_id=fuzz_props.TEXT,
    cluster=fuzz_props.TEXT,
    zone=fuzz_props.TEXT,
    metadata=METADATA,
)
def test_any_node_metadata_is_read_or_refused(
    node_id: str, cluster: str, zone: str, metadata: dict[str, Any]
) -> None:
    try:
        node = base_pb2.Node(id=node_id, cluster=cluster, locality=base_pb2.Locality(zone=zone))
        node.metadata.update(metadata)
    except (ValueError, TypeError):
        return  # NOTE: what protobuf itself refuses (a lone surrogate, a huge integer).
    try:
        info = resources.NodeInfo.from_proto(node)
    except ValueError:
        app = metadata.get("app", cluster)
        assert (
            not node_id
            or not (isinstance(app, str) and app)
            or not (isinstance(metadata.get("k8s_cluster"), str) and metadata["k8s_cluster"])
        )
        return
    assert info.id == node_id and info.zone == zone
    placed = resources.placed(fuzz_xds.front().source, info)
    assert placed.id == info.id and (placed.zone == info.zone or not info.zone)


# --- streams ---------------------------------------------------------------------------------

NODES = st.sampled_from(fuzz_xds.NODES)


@st.composite
def requests(draw: st.DrawFn, delta: bool) -> bytes:
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    req = cls(type_url=draw(st.sampled_from((*snapshot.TYPE_URLS, "", "type.x/unknown"))))
    names = st.lists(st.sampled_from(VOCAB.names), max_size=4)
    if delta:
        req.resource_names_subscribe.extend(draw(names))
        req.resource_names_unsubscribe.extend(draw(names))
        for name, digest in draw(st.lists(st.sampled_from(VOCAB.hashes), max_size=3)):
            req.initial_resource_versions[name] = draw(st.sampled_from([digest, "stale"]))
    else:
        req.resource_names.extend(draw(names))
        req.version_info = draw(st.sampled_from(VOCAB.versions))
    req.response_nonce = draw(st.sampled_from(["", "1", "2", "3", "5"]))
    if draw(st.booleans()):
        req.error_detail.message = "rejected"
    if draw(st.integers(0, 3)) == 0:
        node_id, app, k8s, zone, node_name = draw(NODES)
        req.node.id, req.node.locality.zone = node_id, zone
        req.node.metadata.update({"app": app, "k8s_cluster": k8s, "node_name": node_name})
    return req.SerializeToString()


@st.composite
def streams_of(draw: st.DrawFn) -> tuple[bool, str | None, list[harness.Frame]]:
    delta = draw(st.booleans())
    only_type = draw(st.sampled_from((None, *snapshot.TYPE_URLS)))
    node_id, app, k8s, zone, node_name = draw(NODES)
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    first = cls(type_url=only_type or snapshot.CLUSTER)
    first.node.id, first.node.locality.zone = node_id, zone
    first.node.metadata.update({"app": app, "k8s_cluster": k8s, "node_name": node_name})
    frames = [(0, first.SerializeToString())]
    controls = st.integers(0, 63)
    frames += draw(st.lists(st.tuples(controls, requests(delta)), max_size=10))
    return delta, only_type, frames


@fuzz_props.bounded(250)
@given(streams_of())
def test_streams_keep_their_protocol_whatever_they_are_sent(
    loop: asyncio.Runner, stream: tuple[bool, str | None, list[harness.Frame]]
) -> None:
    delta, only_type, frames = stream
    out = _drive(loop, delta=delta, only_type=only_type, frames=frames)
    # NOTE: the Checker inside asserts each response's invariants as it goes.
    if out.refused:
        assert out.node is None and not out.responses
        return
    assert out.node is not None
    served = {r.type_url for r in out.responses}
    assert only_type is None or served <= {only_type}


@fuzz_props.bounded(200)
@given(
    flags=st.integers(0, 255),
    frames=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=120)), max_size=6),
)
def test_streams_take_arbitrary_bytes(
    loop: asyncio.Runner, flags: int, frames: list[harness.Frame]
) -> None:
    delta, only_type = fuzz_xds.decode_flags(flags)
    _, split = harness.split_frames(harness.join_frames(flags, frames))
    out = _drive(loop, delta=delta, only_type=only_type, frames=split)
    assert out.requests <= len(frames)


def test_a_real_sidecar_stream_is_served_in_make_before_break_order(
    loop: asyncio.Runner,
) -> None:
    """The shape a real Envoy sends (recorded in the seeds): the checker has work to do."""
    node = base_pb2.Node(id="web-east-0", cluster="web")
    node.metadata.update({"app": "web", "k8s_cluster": "east"})
    frames = [
        (0x08, discovery_pb2.DiscoveryRequest(node=node, type_url=t).SerializeToString())
        for t in snapshot.TYPE_URLS
    ]
    out = _drive(loop, delta=False, only_type=None, frames=frames)
    assert [r.type_url for r in out.responses][:2] == [snapshot.CLUSTER, snapshot.ENDPOINT]
    assert len(out.responses) >= 4


# --- regressions -----------------------------------------------------------------------------


class _Context:
    def __init__(self) -> None:
        self.source = fuzz_xds.front().source
        self.responses = resources.ResponseCache()

    def record_nack(self, nack: streams.Nack) -> None:
        pass

    def touched(self, stream: streams.Stream[Any]) -> None:
        pass


@pytest.mark.parametrize("subscribed_before", [False, True], ids=["new-name", "held-name"])
def test_delta_name_in_subscribe_and_unsubscribe_ends_unsubscribed(
    subscribed_before: bool,
) -> None:
    # NOTE: found by fuzz_xds: a name in both lists of one request stayed subscribed if it
    # was new, was dropped if it was held: the outcome depended on the state before.
    ctx = _Context()
    node = resources.NodeInfo(id="n", app="web", k8s_cluster="east", region="", zone="")
    stream = streams.DeltaStream(ctx, node, ctx.source.subscribe())
    try:
        if subscribed_before:
            stream.on_request(
                discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=[ITEM])
            )
        stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=EDS, resource_names_subscribe=[ITEM], resource_names_unsubscribe=[ITEM]
            )
        )
        assert stream.types[EDS].names == set()
        for body in stream.respond(None):
            resp = discovery_pb2.DeltaDiscoveryResponse.FromString(body)
            assert ITEM not in [r.name for r in resp.resources]
    finally:
        stream.sub.close()


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("xds", tmp_path), "xds")
