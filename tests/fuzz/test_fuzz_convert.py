"""Kubernetes objects and the annotations translation reads, from arbitrary JSON: properties
of the converters and of translation, the regressions fuzzing found, and a bounded run of
``fuzz/fuzz_convert.py``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import fuzz_convert
import fuzz_props
import pytest
import yaml
from fuzz_props import TEXT, json_values, maybe
from hypothesis import given
from hypothesis import strategies as st

from navigator import model
from navigator.watcher import convert
from shards import policy, translate

C = model.ClusterName("east")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFESTS = [
    d
    for cluster in ("east", "west")
    for p in sorted((EXAMPLES / cluster).glob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d
]


@fuzz_props.bounded(300)
@given(st.sampled_from(list(model.Kind)), json_values())
def test_any_json_value_converts_or_is_a_conversion_error(kind: model.Kind, raw: Any) -> None:
    before = copy.deepcopy(raw)
    converted, _ = fuzz_convert.convert_all([raw])
    # NOTE: convert_all converts as every kind; here one kind, directly, too.
    try:
        obj = convert.convert(C, kind, raw)
    except convert.ConversionError as exc:
        assert "\n" not in str(exc)
    else:
        assert model.kind_of(obj) == kind
        assert converted
    assert raw == before, "the converter changed its input"


# --- Kubernetes-shaped objects ---------------------------------------------------------------

NAMES = st.one_of(st.sampled_from(["item", "echo", "web", "shop", "a.b", ""]), TEXT)
ANNOTATION = st.one_of(
    st.sampled_from(policy.ANNOTATIONS), st.sampled_from(["x/y", "navigator.avito.ru/nope"])
)
VALUES = st.one_of(
    TEXT,
    st.sampled_from(
        [
            "ring-hash",
            "maglev",
            "tcp",
            "http",
            "/healthz",
            "5xx,reset",
            "session;ttl=1h",
            "3s",
            "1m30s",
            "250ms",
            "0",
            "5",
            "100",
            "1.5s",
            ".5s",
            "1h0m0.5s",
            "0.0000001s",
        ]
    ),
)
META = st.fixed_dictionaries(
    {"name": maybe(NAMES), "namespace": maybe(st.sampled_from(["shop", "web", "edge"]))},
    optional={
        "annotations": maybe(st.dictionaries(ANNOTATION, maybe(VALUES), max_size=5)),
        "labels": maybe(
            st.dictionaries(
                st.sampled_from(
                    ["kubernetes.io/service-name", "topology.kubernetes.io/zone", "app"]
                ),
                maybe(NAMES),
                max_size=3,
            )
        ),
    },
)
PORTS = st.lists(
    st.fixed_dictionaries(
        {"port": maybe(st.integers(-1, 70000))},
        optional={
            "name": maybe(st.sampled_from(["http", "http2-api", "grpc", "tcp", "db", ""])),
            "protocol": maybe(st.sampled_from(["TCP", "UDP", "SCTP"])),
            "targetPort": maybe(st.one_of(st.integers(0, 70000), NAMES)),
            "appProtocol": maybe(st.sampled_from(["http", "kubernetes.io/h2c", "udp", "x"])),
        },
    ),
    max_size=3,
)
SPECS = {
    "Service": st.fixed_dictionaries(
        {"ports": maybe(PORTS)},
        optional={
            "type": maybe(st.sampled_from(["ClusterIP", "NodePort", "ExternalName", "X"])),
            "clusterIP": maybe(st.sampled_from(["10.96.0.10", "None", "", "::1", "x"])),
            "externalName": maybe(NAMES),
        },
    ),
    "Nexus": st.fixed_dictionaries(
        {"appName": maybe(NAMES)},
        optional={
            "services": maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"name": maybe(NAMES), "namespace": maybe(NAMES)}
                    ),
                    max_size=3,
                )
            )
        },
    ),
    "CanaryRelease": st.fixed_dictionaries(
        {
            "backends": maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": maybe(NAMES), "weight": maybe(st.integers(-5, 120))}
                    ),
                    max_size=3,
                )
            )
        }
    ),
    "Gateway": st.fixed_dictionaries(
        {"ingressClass": maybe(NAMES), "port": maybe(st.integers(-1, 70000))}
    ),
}


@st.composite
def k8s_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly objects of the lab's manifests, with some fields replaced by generated ones."""
    base = copy.deepcopy(draw(st.sampled_from(MANIFESTS)))
    kind = base["kind"]
    if draw(st.booleans()):
        base["metadata"] = draw(META)
    if kind in SPECS and draw(st.booleans()):
        base["spec"] = draw(SPECS[kind])
    if draw(st.integers(0, 4)) == 0:
        base[draw(st.sampled_from(sorted(base)))] = draw(json_values(max_leaves=4))
    return base


@fuzz_props.bounded(120)
@given(st.lists(k8s_objects(), min_size=1, max_size=8))
def test_objects_convert_and_translate_without_raising(objects: list[dict[str, Any]]) -> None:
    outcome = fuzz_convert.process(objects)
    assert outcome.result is not None
    # Translation reports bad input as diagnostics of services, apps and gateways.
    for diags in outcome.result.diagnostics.values():
        assert all(
            d.severity in (translate.Severity.ERROR, translate.Severity.WARNING) for d in diags
        )


@fuzz_props.bounded(150)
@given(st.dictionaries(st.sampled_from(policy.ANNOTATIONS), VALUES, min_size=1, max_size=6))
def test_policy_annotations_are_used_or_reported_never_raised(values: dict[str, str]) -> None:
    svc = copy.deepcopy(next(d for d in MANIFESTS if d["kind"] == "Service"))
    svc["metadata"]["annotations"] = values
    objects = [svc, *[d for d in MANIFESTS if d["kind"] != "Service"]]
    assert fuzz_convert.process(objects).result is not None
    pairs = sorted(values.items())
    pol, diags = policy.parse(pairs, obj="services/shop/item@east")
    # Deterministic and sorted, as docs/annotations.md says; an invalid value is reported
    # by its annotation's name and falls back to the default alone.
    assert policy.parse(list(reversed(pairs)), obj="services/shop/item@east") == (pol, diags)
    assert diags == sorted(diags)
    for d in diags:
        assert d.reason in (policy.INVALID, policy.NOT_APPLICABLE), d
        if d.reason == policy.INVALID:
            key = d.message.split()[1].rstrip(":")
            assert key in values and d.message.endswith("using the default"), d


# --- regressions -----------------------------------------------------------------------------


def _service(**changes: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "metadata": {"name": "item", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }
    for path, value in changes.items():
        node = svc
        *parents, last = path.split("__")
        for key in parents:
            node = node[key] if not key.isdigit() else node[int(key)]
        node[last] = value
    return svc


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            _service(metadata__annotations={"navigator.avito.ru/retries": "\ud800"}),
            id="annotation-value",
        ),
        pytest.param(
            _service(metadata__annotations={"navigator.avito.ru/\ud800": "1"}),
            id="annotation-key",
        ),
        pytest.param(_service(metadata__name="item\ud800"), id="name"),
        pytest.param(_service(spec__ports__0__targetPort="\ud800"), id="target-port"),
    ],
)
def test_a_lone_surrogate_is_a_conversion_error(raw: dict[str, Any]) -> None:
    # NOTE: found by fuzz_convert: JSON may escape one ("\ud800"); it converted, then the
    # watcher's etcd value (model.encode, UTF-8) raised UnicodeEncodeError.
    with pytest.raises(convert.ConversionError, match="lone surrogate"):
        convert.convert(C, model.Kind.SERVICE, raw)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("²", "²", id="superscript-digit-is-a-name"),
        pytest.param("٨٠", "٨٠", id="non-ascii-digits-are-a-name"),
        pytest.param("0" * 10 + "8080", 8080, id="leading-zeros"),
        pytest.param("9" * 5000, None, id="longer-than-int-takes"),
    ],
)
def test_a_digit_string_target_port(target: str, expected: int | str | None) -> None:
    # NOTE: found by fuzz_convert: "²" is a digit to str.isdigit, not to int(), and int()
    # refuses 5000 digits: both raised ValueError past the converter. A number is ASCII
    # digits, as for Kubernetes (Go's strconv); anything else is a port name.
    raw = _service(spec__ports__0__targetPort=target)
    if expected is None:
        with pytest.raises(convert.ConversionError, match="out of range"):
            convert.convert(C, model.Kind.SERVICE, raw)
    else:
        svc = convert.convert(C, model.Kind.SERVICE, raw)
        assert isinstance(svc, model.Service) and svc.ports[0].target_port == expected


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        pytest.param("connect-timeout", "999999999999999999h", id="duration-overflow"),
        pytest.param("hash-cookie", "s;ttl=999999999999999999h", id="cookie-ttl-overflow"),
        pytest.param("connect-timeout", "9" * 5000 + "s", id="duration-too-many-digits"),
        pytest.param("retries", "9" * 5000, id="integer-too-many-digits"),
    ],
)
def test_an_absurd_policy_value_is_an_invalid_annotation(annotation: str, value: str) -> None:
    # NOTE: found by fuzz_convert: OverflowError (timedelta) and ValueError (int() of more
    # than 4300 digits) escaped translation instead of an InvalidAnnotation diagnostic.
    key = policy.PREFIX + annotation
    pol, diags = policy.parse([(key, value)], obj="services/shop/item@east")
    assert [d.reason for d in diags] == [policy.INVALID]
    assert pol == policy.DEFAULT
    svc = _service(metadata__annotations={key: value})
    result = fuzz_convert.process([svc]).result
    assert result is not None
    assert policy.INVALID in {d.reason for d in result.diagnostics[""]}


def test_leading_zeros_still_make_a_valid_integer() -> None:
    pol, diags = policy.parse([(policy.PREFIX + "retries", "0" * 5000 + "3")], obj="s")
    assert diags == [] and pol.retries == 3


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("convert", tmp_path), "convert")
