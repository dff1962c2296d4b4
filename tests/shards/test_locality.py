"""Locality priorities and zone variants of endpoint assignments: tables over pure functions."""

from __future__ import annotations

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from navigator import keys, model, snapshot
from shards import translate

EAST = model.ClusterName("east")
WEST = model.ClusterName("west")
R1A = translate.Zone(region="r1", name="r1-a")
R1B = translate.Zone(region="r1", name="r1-b")
R2A = translate.Zone(region="r2", name="r2-a")


def _ep(region: str, zone: str, ip: str, k8s: model.ClusterName = EAST) -> translate.LbEndpoint:
    return translate.LbEndpoint(cluster=k8s, region=region, zone=zone, ip=ip, port=8080)


def _port(*eps: translate.LbEndpoint) -> translate.MeshPort:
    return translate.MeshPort(
        namespace="shop",
        service="item",
        name="http",
        port=8080,
        protocol=model.Protocol.HTTP,
        cluster_ips={EAST: "127.31.0.10"},
        endpoints=tuple(sorted(eps)),
    )


def _priorities(cla: endpoint_pb2.ClusterLoadAssignment) -> dict[str, int]:
    """Endpoint IP → priority."""
    doc = snapshot.resource_to_dict(snapshot.ENDPOINT, cla.SerializeToString())
    return {
        lb["endpoint"]["address"]["socket_address"]["address"]: group.get("priority", 0)
        for group in doc["endpoints"]
        for lb in group["lb_endpoints"]
    }


A1 = _ep("r1", "r1-a", "10.0.0.1")
A2 = _ep("r1", "r1-a", "10.0.0.2")
B1 = _ep("r1", "r1-b", "10.0.1.1")
C1 = _ep("r2", "r2-a", "10.0.2.1", WEST)
NO_REGION_B = _ep("", "r1-b", "10.0.1.9")
NOWHERE = _ep("", "", "10.0.9.9")


@pytest.mark.parametrize(
    ("eps", "zone", "want"),
    [
        pytest.param(
            (A1, A2, B1, C1),
            R1A,
            {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.1.1": 1, "10.0.2.1": 2},
            id="own-zone-region-elsewhere",
        ),
        pytest.param(
            (A1, B1, C1), R2A, {"10.0.2.1": 0, "10.0.0.1": 1, "10.0.1.1": 1}, id="no-p1-renumbered"
        ),
        pytest.param((B1, C1), R1A, {"10.0.1.1": 0, "10.0.2.1": 1}, id="empty-own-zone-renumbered"),
        pytest.param((C1,), R1A, {"10.0.2.1": 0}, id="only-other-region"),
        pytest.param(
            (A1, B1, C1), None, {"10.0.0.1": 0, "10.0.1.1": 0, "10.0.2.1": 0}, id="default-all-p0"
        ),
        pytest.param(
            (A1, NO_REGION_B, NOWHERE),
            R1A,
            {"10.0.0.1": 0, "10.0.1.9": 1, "10.0.9.9": 2},
            id="region-from-zone-unknown-is-elsewhere",
        ),
        pytest.param(
            (A1, B1),
            translate.Zone(region="", name="r1-a"),
            {"10.0.0.1": 0, "10.0.1.1": 1},
            id="zone-without-region",
        ),
    ],
)
def test_priorities(
    eps: tuple[translate.LbEndpoint, ...], zone: translate.Zone | None, want: dict[str, int]
) -> None:
    region_of = {z.name: z.region for z in (R1A, R1B, R2A)}
    cla = translate.load_assignment(_port(*eps), zone=zone, region_of=region_of)
    assert _priorities(cla) == want
    used = [group.priority for group in cla.endpoints]
    assert used == sorted(used), "localities are ordered by priority"
    assert set(used) == set(range(max(used) + 1)), "priorities are contiguous from 0"
    assert cla.policy.overprovisioning_factor.value == 140


@pytest.mark.parametrize(
    ("pairs", "want", "reasons"),
    [
        pytest.param(
            [("r1", "r1-a"), ("r1", "r1-b"), ("r2", "r2-a")], (R1A, R1B, R2A), [], id="plain"
        ),
        pytest.param([("", "r1-b"), ("r1", "r1-b")], (R1B,), [], id="region-joined-from-node"),
        pytest.param([("", "z")], (translate.Zone("", "z"),), [], id="region-unknown"),
        pytest.param([("r1", "")], (), [], id="no-zone"),
        pytest.param([("r1", "a/b"), ("r1", "r1-a")], (R1A,), ["InvalidZoneName"], id="slash"),
        pytest.param([("r1", keys.DEFAULT_VARIANT)], (), ["InvalidZoneName"], id="reserved"),
        pytest.param(
            [("r2", "z"), ("r1", "z")],
            (translate.Zone("r1", "z"),),
            ["ZoneRegionConflict"],
            id="two-regions",
        ),
    ],
)
def test_mesh_zones(
    pairs: list[tuple[str, str]], want: tuple[translate.Zone, ...], reasons: list[str]
) -> None:
    zones, diags = translate.mesh_zones(pairs)
    assert zones == want
    assert [d.reason for d in diags] == reasons


def test_service_resources_hold_default_and_every_zone_variant() -> None:
    svc = translate.MeshService(
        namespace="shop", name="item", ports=(_port(A1, B1, C1),), clusters=(EAST,)
    )
    res = translate.service_resources(svc, translate.Options(), zones=(R1A, R1B, R2A))
    assert {name: sorted(v) for name, v in res.endpoints.items()} == {
        "shop/item:8080": sorted([keys.DEFAULT_VARIANT, "r1-a", "r1-b", "r2-a"])
    }
    assert res.endpoints["shop/item:8080"][keys.DEFAULT_VARIANT] == (
        translate.load_assignment(_port(A1, B1, C1)).SerializeToString(deterministic=True)
    )
