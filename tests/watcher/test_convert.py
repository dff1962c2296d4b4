"""Tables for the pure converter: Kubernetes JSON in, normalized model (or a reason) out."""

from __future__ import annotations

from typing import Any

import pytest

from navigator import keys, model
from navigator.watcher import convert

C = model.ClusterName("east")
P = model.Protocol


def svc(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "ns", "name": "item", **meta},
        "spec": spec,
    }


def port(
    number: int, name: str = "", protocol: P = P.TCP, target: int | str = 0
) -> model.ServicePort:
    return model.ServicePort(
        name=name, port=number, protocol=protocol, target_port=target or number
    )


def service(ports: tuple[model.ServicePort, ...], **kw: Any) -> model.Service:
    base: dict[str, Any] = {
        "cluster": C,
        "namespace": "ns",
        "name": "item",
        "type": model.ServiceType.CLUSTER_IP,
        "cluster_ip": "10.96.0.10",
        "ports": ports,
    }
    base.update(kw)
    return model.Service(**base)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            svc({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
            service((port(80, "http", P.HTTP),)),
            id="http-by-name",
        ),
        pytest.param(
            svc(
                {
                    "clusterIP": "10.96.0.10",
                    "ports": [
                        {"name": "http2-api", "port": 81},
                        {"name": "grpc", "port": 82},
                        {"name": "grpc-web", "port": 83},
                        {"name": "https", "port": 443},
                        {"name": "httpx", "port": 84},
                        {"name": "db", "port": 5432},
                        {"port": 8890},
                    ],
                }
            ),
            service(
                (
                    port(81, "http2-api", P.HTTP2),
                    port(82, "grpc", P.GRPC),
                    port(83, "grpc-web", P.GRPC),
                    port(84, "httpx", P.TCP),
                    port(443, "https", P.TCP),
                    port(5432, "db", P.TCP),
                    port(8890, "", P.TCP),
                )
            ),
            id="name-prefixes-sorted-by-port",
        ),
        pytest.param(
            svc(
                {
                    "clusterIP": "10.96.0.10",
                    "ports": [
                        {"name": "tcp-a", "port": 1, "appProtocol": "http"},
                        {"name": "x", "port": 2, "appProtocol": "kubernetes.io/h2c"},
                        {"name": "x2", "port": 3, "appProtocol": "h2c"},
                        {"name": "x3", "port": 4, "appProtocol": "GRPC"},
                        {"name": "x4", "port": 5, "appProtocol": "kubernetes.io/ws"},
                        {"name": "http", "port": 6, "appProtocol": "tcp"},
                        {"name": "http", "port": 7, "appProtocol": "example.com/custom"},
                    ],
                }
            ),
            service(
                (
                    port(1, "tcp-a", P.HTTP),
                    port(2, "x", P.HTTP2),
                    port(3, "x2", P.HTTP2),
                    port(4, "x3", P.GRPC),
                    port(5, "x4", P.HTTP),
                    port(6, "http", P.TCP),
                    port(7, "http", P.HTTP),
                )
            ),
            id="app-protocol-first-unknown-falls-back-to-name",
        ),
        pytest.param(
            svc(
                {
                    "clusterIP": "10.96.0.10",
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "appProtocol": "http"},
                        {"name": "sctp", "port": 99, "protocol": "SCTP"},
                    ],
                }
            ),
            service((port(53, "dns", P.UDP),)),
            id="udp-port-sctp-left-out",
        ),
        pytest.param(
            svc(
                {
                    "clusterIP": "10.96.0.10",
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "web"},
                        {"name": "a", "port": 81, "targetPort": 8081},
                        {"name": "b", "port": 82, "targetPort": "8082"},
                    ],
                }
            ),
            service(
                (
                    port(80, "http", P.HTTP, "web"),
                    port(81, "a", P.TCP, 8081),
                    port(82, "b", P.TCP, 8082),
                )
            ),
            id="target-ports-named-and-numeric",
        ),
        pytest.param(
            svc({"clusterIP": "None", "ports": [{"port": 80}]}),
            service((port(80),), type=model.ServiceType.HEADLESS, cluster_ip=""),
            id="headless",
        ),
        pytest.param(
            svc({"type": "ExternalName", "externalName": "db.example.com"}),
            service(
                (),
                type=model.ServiceType.EXTERNAL_NAME,
                cluster_ip="",
                external_name="db.example.com",
            ),
            id="external-name",
        ),
        pytest.param(
            svc({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
            service((port(80),)),
            id="node-port-is-cluster-ip",
        ),
        pytest.param(
            svc(
                {"clusterIP": "10.96.0.10"},
                annotations={
                    "navigator.avito.ru/lb": "maglev",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "navigator.avito.ru/a": "1",
                },
            ),
            service(
                (), annotations=(("navigator.avito.ru/a", "1"), ("navigator.avito.ru/lb", "maglev"))
            ),
            id="only-mesh-annotations-sorted",
        ),
    ],
)
def test_service(raw: dict[str, Any], expected: model.Service) -> None:
    assert convert.convert(C, model.Kind.SERVICE, raw) == expected


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": [{"port": 0}]}),
            r"spec\.ports\[0\]\.port: port 0 out of range",
            id="port-zero",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": [{"port": 70000}]}),
            "out of range",
            id="port-too-large",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": [{"port": "80"}]}),
            "expected an integer, got string",
            id="port-as-string",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": [{"port": True}]}),
            "expected an integer, got boolean",
            id="port-as-bool",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": [{"port": 80, "targetPort": 0}]}),
            "targetPort: port 0",
            id="target-port-zero",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"ports": "80"}),
            r"spec\.ports: expected a list",
            id="ports-not-a-list",
        ),
        pytest.param(
            model.Kind.SERVICE, svc({"type": "Weird"}), "unknown service type", id="unknown-type"
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"type": "ExternalName"}),
            "externalName",
            id="external-name-missing",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({"clusterIP": "banana"}),
            "not an IP address",
            id="bad-cluster-ip",
        ),
        pytest.param(
            model.Kind.SERVICE,
            {"metadata": {"namespace": "ns"}, "spec": {}},
            r"metadata\.name",
            id="no-name",
        ),
        pytest.param(
            model.Kind.SERVICE,
            {"metadata": {"name": "x"}, "spec": {}},
            r"metadata\.namespace",
            id="no-namespace",
        ),
        pytest.param(
            model.Kind.SERVICE,
            {"metadata": {"namespace": "ns", "name": "x"}},
            "spec: expected an object, got null",
            id="no-spec",
        ),
        pytest.param(
            model.Kind.SERVICE,
            svc({}, annotations={"navigator.avito.ru/x": 5}),
            "annotations",
            id="annotation-not-string",
        ),
        pytest.param(
            model.Kind.NEXUS,
            {"metadata": {"namespace": "ns", "name": "n"}, "spec": {"appName": 42}},
            r"spec\.appName: expected a string, got number",
            id="nexus-app-name-number",
        ),
        pytest.param(
            model.Kind.NEXUS,
            {"metadata": {"namespace": "ns", "name": "n"}, "spec": {}},
            r"spec\.appName",
            id="nexus-without-app-name",
        ),
        pytest.param(
            model.Kind.NEXUS,
            {
                "metadata": {"namespace": "ns", "name": "n"},
                "spec": {"appName": "a", "services": [{"name": 1}]},
            },
            r"services\[0\]\.name",
            id="nexus-service-name-number",
        ),
        pytest.param(
            model.Kind.CANARY,
            {
                "metadata": {"namespace": "ns", "name": "c"},
                "spec": {"backends": [{"name": "a", "weight": "50"}]},
            },
            "weight: expected an integer",
            id="canary-weight-string",
        ),
        pytest.param(
            model.Kind.CANARY,
            {
                "metadata": {"namespace": "ns", "name": "c"},
                "spec": {"backends": [{"name": "a", "weight": -1}]},
            },
            "negative weight",
            id="canary-negative-weight",
        ),
        pytest.param(
            model.Kind.GATEWAY,
            {
                "metadata": {"namespace": "ns", "name": "g"},
                "spec": {"ingressClass": "x", "port": 0},
            },
            "out of range",
            id="gateway-port-zero",
        ),
        pytest.param(
            model.Kind.GATEWAY,
            {"metadata": {"namespace": "ns", "name": "g"}, "spec": {"port": 80}},
            "ingressClass",
            id="gateway-without-class",
        ),
        pytest.param(
            model.Kind.ENDPOINTS,
            {
                "metadata": {"namespace": "ns", "name": "e"},
                "subsets": [{"addresses": [{"ip": "10.0.0.300"}]}],
            },
            "not an IP address",
            id="endpoints-bad-ip",
        ),
        pytest.param(
            model.Kind.ENDPOINTS,
            {"metadata": {"namespace": "ns", "name": "e"}, "subsets": [{"addresses": [{}]}]},
            r"addresses\[0\]\.ip",
            id="endpoints-no-ip",
        ),
        pytest.param(
            model.Kind.ENDPOINTS,
            {
                "metadata": {"namespace": "ns", "name": "e"},
                "subsets": [{"ports": [{"port": 99999}]}],
            },
            "out of range",
            id="endpoints-port-out-of-range",
        ),
        pytest.param(
            model.Kind.NODE,
            {"metadata": {"name": "a/b"}},
            "invalid name",
            id="node-name-with-slash",
        ),
        pytest.param(model.Kind.NODE, [], "expected an object", id="not-an-object"),
    ],
)
def test_malformed_objects_raise_one_line_reasons(kind: model.Kind, raw: Any, reason: str) -> None:
    with pytest.raises(convert.ConversionError, match=reason) as info:
        convert.convert(C, kind, raw)
    assert "\n" not in str(info.value)


def ep_obj(subsets: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "item"}, "subsets": subsets}


EP = model.EndpointPort


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(ep_obj([]), (), id="empty"),
        pytest.param({"metadata": {"namespace": "ns", "name": "item"}}, (), id="no-subsets"),
        pytest.param(
            ep_obj(
                [
                    {
                        "addresses": [
                            {
                                "ip": "10.1.0.10",
                                "nodeName": "n2",
                                "targetRef": {"kind": "Pod", "name": "p2"},
                            },
                            {
                                "ip": "10.1.0.9",
                                "nodeName": "n1",
                                "targetRef": {"kind": "Pod", "name": "p1"},
                            },
                        ],
                        "notReadyAddresses": [{"ip": "10.1.0.11"}],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    }
                ]
            ),
            (
                model.Endpoint("10.1.0.9", True, (EP("http", 8080),), node="n1", pod="p1"),
                model.Endpoint("10.1.0.10", True, (EP("http", 8080),), node="n2", pod="p2"),
                model.Endpoint("10.1.0.11", False, (EP("http", 8080),)),
            ),
            id="ready-and-not-ready-sorted-numerically",
        ),
        pytest.param(
            ep_obj(
                [
                    {"addresses": [{"ip": "10.1.0.1"}], "ports": [{"name": "http", "port": 80}]},
                    {"addresses": [{"ip": "10.1.0.1"}], "ports": [{"name": "grpc", "port": 90}]},
                    {
                        "notReadyAddresses": [{"ip": "10.1.0.2"}],
                        "ports": [{"name": "http", "port": 81}],
                    },
                    {"addresses": [{"ip": "10.1.0.2"}], "ports": [{"name": "grpc", "port": 91}]},
                ]
            ),
            (
                model.Endpoint("10.1.0.1", True, (EP("grpc", 90), EP("http", 80))),
                model.Endpoint("10.1.0.2", False, (EP("grpc", 91), EP("http", 81))),
            ),
            id="duplicate-ips-merged-not-ready-wins",
        ),
        pytest.param(
            ep_obj(
                [{"addresses": [{"ip": "10.1.0.1", "targetRef": {"kind": "Node", "name": "x"}}]}]
            ),
            (model.Endpoint("10.1.0.1", True, ()),),
            id="target-ref-not-a-pod",
        ),
    ],
)
def test_endpoints(raw: dict[str, Any], expected: tuple[model.Endpoint, ...]) -> None:
    got = convert.convert(C, model.Kind.ENDPOINTS, raw)
    assert got == model.Endpoints(cluster=C, namespace="ns", name="item", endpoints=expected)


def slice_obj(
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
    service: str | None = "item",
) -> dict[str, Any]:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service is not None:
        labels[convert.SERVICE_NAME_LABEL] = service
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": "item-abc12", "labels": labels},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }


HTTP = (EP("http", 8080),)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(slice_obj([]), (), id="empty"),
        pytest.param(
            {**slice_obj([]), "endpoints": None, "ports": None}, (), id="null-endpoints-and-ports"
        ),
        pytest.param(
            slice_obj(
                [
                    {
                        "addresses": ["10.1.0.10"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": "n2",
                        "zone": "z2",
                        "targetRef": {"kind": "Pod", "namespace": "ns", "name": "p2"},
                    },
                    {
                        "addresses": ["10.1.0.9"],
                        "conditions": {"ready": True},
                        "nodeName": "n1",
                        "zone": "z1",
                        "targetRef": {"kind": "Pod", "name": "p1"},
                    },
                    {"addresses": ["10.1.0.11"], "conditions": {"ready": False}},
                ]
            ),
            (
                model.Endpoint("10.1.0.9", True, HTTP, node="n1", zone="z1", pod="p1"),
                model.Endpoint("10.1.0.10", True, HTTP, node="n2", zone="z2", pod="p2"),
                model.Endpoint("10.1.0.11", False, HTTP),
            ),
            id="ready-not-ready-zone-node-pod-sorted-numerically",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.2"], "conditions": {}}]),
            (model.Endpoint("10.1.0.1", True, HTTP), model.Endpoint("10.1.0.2", True, HTTP)),
            id="ready-absent-is-ready",
        ),
        pytest.param(
            slice_obj(
                [
                    {
                        "addresses": ["10.1.0.1"],
                        "conditions": {"ready": False, "serving": True, "terminating": True},
                    }
                ]
            ),
            (model.Endpoint("10.1.0.1", False, HTTP),),
            id="terminating-but-serving-is-not-ready",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.1.0.2", "10.1.0.1"], "nodeName": "n1"}]),
            (
                model.Endpoint("10.1.0.1", True, HTTP, node="n1"),
                model.Endpoint("10.1.0.2", True, HTTP, node="n1"),
            ),
            id="one-endpoint-per-address",
        ),
        pytest.param(
            slice_obj(
                [
                    {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
                    {"addresses": ["10.1.0.1"], "conditions": {"ready": False}, "zone": "z1"},
                ]
            ),
            (model.Endpoint("10.1.0.1", False, HTTP, zone="z1"),),
            id="duplicate-ip-merged-not-ready-wins",
        ),
        pytest.param(
            slice_obj(
                [{"addresses": ["fd00::0:1"]}, {"addresses": ["fd00::2"]}],
                address_type="IPv6",
            ),
            (model.Endpoint("fd00::1", True, HTTP), model.Endpoint("fd00::2", True, HTTP)),
            id="ipv6-normalized",
        ),
        pytest.param(
            slice_obj(
                [{"addresses": ["10.1.0.1"]}],
                ports=[
                    {"name": "http", "port": 8080},
                    {"port": 9090, "protocol": "UDP"},
                    {"name": "every"},
                    {"name": "grpc", "port": 9000, "appProtocol": "grpc"},
                ],
            ),
            (
                model.Endpoint(
                    "10.1.0.1", True, (EP("", 9090, "UDP"), EP("grpc", 9000), EP("http", 8080))
                ),
            ),
            id="ports-of-the-slice-sorted-portless-left-out",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.1.0.1"], "targetRef": {"kind": "Node", "name": "x"}}]),
            (model.Endpoint("10.1.0.1", True, HTTP),),
            id="target-ref-not-a-pod",
        ),
    ],
)
def test_endpoint_slice(raw: dict[str, Any], expected: tuple[model.Endpoint, ...]) -> None:
    got = convert.convert(C, model.Kind.ENDPOINT_SLICE, raw)
    assert got == model.EndpointSlice(
        cluster=C, namespace="ns", name="item-abc12", service="item", endpoints=expected
    )
    assert model.decode(model.Kind.ENDPOINT_SLICE, model.encode(got)) == got


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(
            slice_obj([], service=None),
            r"metadata\.labels\[kubernetes\.io/service-name\]: missing",
            id="no-service-name-label",
        ),
        pytest.param(
            {**slice_obj([]), "metadata": {"namespace": "ns", "name": "s"}},
            "service-name.*missing",
            id="no-labels-at-all",
        ),
        pytest.param(slice_obj([], service=""), "invalid name ''", id="empty-service-name"),
        pytest.param(slice_obj([], service="a/b"), "invalid name", id="service-name-with-slash"),
        pytest.param(
            slice_obj([{"addresses": ["db.example.com"]}], address_type="FQDN"),
            "addressType: 'FQDN' not supported",
            id="fqdn",
        ),
        pytest.param(
            {**slice_obj([]), "addressType": None},
            "addressType: expected a string, got null",
            id="no-address-type",
        ),
        pytest.param(
            slice_obj([], ports=[{"name": "http", "port": 0}]),
            r"ports\[0\]\.port: port 0 out of range",
            id="port-zero",
        ),
        pytest.param(
            slice_obj([], ports=[{"name": "http", "port": "8080"}]),
            r"ports\[0\]\.port: expected an integer, got string",
            id="port-as-string",
        ),
        pytest.param(
            slice_obj([], ports=[{"port": 80, "protocol": "QUIC"}]),
            "unknown protocol 'QUIC'",
            id="port-unknown-protocol",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.0.0.300"]}]),
            r"endpoints\[0\]\.addresses\[0\]: not an IP address",
            id="bad-ip",
        ),
        pytest.param(
            slice_obj([{"addresses": ["fd00::1"]}]),
            "fd00::1 is not an IPv4 address",
            id="ipv6-in-ipv4-slice",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.0.0.1"]}], address_type="IPv6"),
            "10.0.0.1 is not an IPv6 address",
            id="ipv4-in-ipv6-slice",
        ),
        pytest.param(
            slice_obj([{"addresses": "10.0.0.1"}]),
            r"endpoints\[0\]\.addresses: expected a list",
            id="addresses-not-a-list",
        ),
        pytest.param(
            slice_obj([{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]),
            r"conditions\.ready: expected a boolean, got string",
            id="ready-not-a-boolean",
        ),
    ],
)
def test_malformed_endpoint_slices(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(convert.ConversionError, match=reason) as info:
        convert.convert(C, model.Kind.ENDPOINT_SLICE, raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("labels", "region", "zone"),
    [
        pytest.param(
            {"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z1"},
            "r1",
            "z1",
            id="topology",
        ),
        pytest.param(
            {
                "failure-domain.beta.kubernetes.io/region": "r0",
                "failure-domain.beta.kubernetes.io/zone": "z0",
            },
            "r0",
            "z0",
            id="beta-fallback",
        ),
        pytest.param(
            {"topology.kubernetes.io/zone": "z1", "failure-domain.beta.kubernetes.io/zone": "z0"},
            "",
            "z1",
            id="topology-wins",
        ),
        pytest.param(None, "", "", id="no-labels"),
    ],
)
def test_node(labels: dict[str, str] | None, region: str, zone: str) -> None:
    raw = {"metadata": {"name": "node-1", "labels": labels}}
    got = convert.convert(C, model.Kind.NODE, raw)
    assert got == model.Node(cluster=C, name="node-1", region=region, zone=zone)


def test_nexus_defaults_namespace_dedupes_and_sorts() -> None:
    raw = {
        "apiVersion": "navigator.avito.ru/v1",
        "kind": "Nexus",
        "metadata": {"namespace": "app", "name": "n"},
        "spec": {
            "appName": "item",
            "services": [
                {"namespace": "b", "name": "x"},
                {"name": "own"},
                {"namespace": "a"},
                {"namespace": "app", "name": "own"},
            ],
        },
    }
    got = convert.convert(C, model.Kind.NEXUS, raw)
    assert got == model.Nexus(
        cluster=C,
        namespace="app",
        name="n",
        app_name=model.AppName("item"),
        services=(
            model.ServiceRef("a", ""),
            model.ServiceRef("app", "own"),
            model.ServiceRef("b", "x"),
        ),
    )


def test_canary_and_gateway() -> None:
    canary = {
        "metadata": {"namespace": "ns", "name": "c"},
        "spec": {
            "backends": [
                {"name": "v2", "weight": 10},
                {"namespace": "o", "name": "v1", "weight": 90},
            ]
        },
    }
    assert convert.convert(C, model.Kind.CANARY, canary) == model.CanaryRelease(
        cluster=C,
        namespace="ns",
        name="c",
        backends=(model.CanaryBackend("ns", "v2", 10), model.CanaryBackend("o", "v1", 90)),
    )
    gw = {
        "metadata": {"namespace": "ns", "name": "g"},
        "spec": {"ingressClass": "public", "port": 8080},
    }
    assert convert.convert(C, model.Kind.GATEWAY, gw) == model.Gateway(
        cluster=C, namespace="ns", name="g", ingress_class="public", port=8080
    )


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        pytest.param(model.Kind.SERVICE, svc({"ports": [{"port": 80}]}), id="service"),
        pytest.param(
            model.Kind.NODE, {"metadata": {"name": "n", "namespace": "ignored"}}, id="node"
        ),
        pytest.param(
            model.Kind.NEXUS,
            {"metadata": {"namespace": "a", "name": "n"}, "spec": {"appName": "x"}},
            id="nexus",
        ),
        pytest.param(model.Kind.ENDPOINT_SLICE, slice_obj([]), id="endpoint-slice"),
    ],
)
def test_identity_matches_the_state_key_of_the_converted_object(
    kind: model.Kind, raw: dict[str, Any]
) -> None:
    obj = convert.convert(C, kind, raw)
    ident = convert.identity(C, kind, raw)
    assert ident == convert.identity_of(obj)
    assert keys.parse_state_key(keys.state_key(obj)) == ident


def test_encoding_is_stable_under_reordering() -> None:
    a = svc(
        {"clusterIP": "10.96.0.10", "ports": [{"name": "b", "port": 2}, {"name": "a", "port": 1}]}
    )
    b = svc(
        {"clusterIP": "10.96.0.10", "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}
    )
    ea = model.encode(convert.convert(C, model.Kind.SERVICE, a))
    assert ea == model.encode(convert.convert(C, model.Kind.SERVICE, b))
    assert model.decode(model.Kind.SERVICE, ea) == convert.convert(C, model.Kind.SERVICE, a)
