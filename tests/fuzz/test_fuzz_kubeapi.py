"""The local API server's parsers below HTTP (selectors, patches, continue tokens, admission):
properties, the regressions fuzzing found, and a bounded run of ``fuzz/fuzz_kubeapi.py``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import fuzz_kubeapi
import fuzz_props
import harness
import pytest
from fuzz_props import TEXT, json_values, maybe
from hypothesis import given
from hypothesis import strategies as st

from navigator.kubeapi import errors, patch, selectors, store

# --- selectors -------------------------------------------------------------------------------

KEYS = st.sampled_from(["app", "tier", "kubernetes.io/service-name", "a.b/c-d"])
VALUES = st.sampled_from(["web", "db", "item", "x-1", ""])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)


@st.composite
def requirements(draw: st.DrawFn) -> tuple[str, Any]:
    """(selector text, the reference predicate over labels) of one requirement."""
    key = draw(KEYS)
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    if op in ("in", "notin"):
        values = draw(st.lists(VALUES.filter(bool), min_size=1, max_size=3))
        text = f"{key} {op} ({', '.join(values)})"
        if op == "in":
            return text, lambda labels: labels.get(key) in values
        return text, lambda labels: labels.get(key) not in values
    if op == "exists":
        return key, lambda labels: key in labels
    if op == "!":
        return f"!{key}", lambda labels: key not in labels
    value = draw(VALUES)
    if op == "!=":
        return f"{key}{op}{value}", lambda labels: labels.get(key) != value
    return f"{key} {op} {value}", lambda labels: labels.get(key) == value


@fuzz_props.bounded(200)
@given(st.lists(requirements(), max_size=4), LABELS)
def test_a_label_selector_selects_what_kubernetes_says(
    reqs: list[tuple[str, Any]], labels: dict[str, str]
) -> None:
    sel = selectors.parse(",".join(text for text, _ in reqs), None)
    obj = {"metadata": {"name": "x", "labels": labels}}
    assert sel.matches(obj) == all(predicate(labels) for _, predicate in reqs)


@fuzz_props.bounded(300)
@given(st.one_of(TEXT, st.text()), st.one_of(TEXT, st.text()))
def test_any_selector_text_parses_or_is_a_bad_request(label: str, field: str) -> None:
    fuzz_kubeapi.check_selectors(label, field)


# --- patches ---------------------------------------------------------------------------------

DOCS = st.dictionaries(TEXT, json_values(max_leaves=6), max_size=5)
OPS = st.lists(
    st.fixed_dictionaries(
        {
            "op": maybe(st.sampled_from(["add", "remove", "replace", "move", "copy", "test"])),
            "path": maybe(st.sampled_from(["", "/", "/a", "/a/0", "/a/-", "/a/²", "/~1", "/b/c"])),
        },
        optional={"value": json_values(max_leaves=3), "from": maybe(st.sampled_from(["", "/a"]))},
    ),
    max_size=4,
)
MEDIA = st.sampled_from([patch.MERGE, patch.JSON, patch.STRATEGIC, patch.APPLY, "text/x", ""])


@fuzz_props.bounded(300)
@given(MEDIA, DOCS, st.one_of(OPS, DOCS, json_values()))
def test_any_patch_applies_or_is_refused_never_mutating(
    media: str, target: dict[str, Any], body: Any
) -> None:
    fuzz_kubeapi.check_patch(media, target, body)


@fuzz_props.bounded(200)
@given(DOCS, TEXT.filter(lambda k: "/" not in k and "~" not in k), json_values(max_leaves=4))
def test_a_json_patch_add_then_remove_gives_the_document_back(
    target: dict[str, Any], key: str, value: Any
) -> None:
    target.pop(key, None)
    ops = [{"op": "add", "path": f"/{key}", "value": value}, {"op": "remove", "path": f"/{key}"}]
    assert patch.json_patch(target, ops) == target


# --- continue tokens -------------------------------------------------------------------------


@fuzz_props.bounded(200)
@given(st.integers(min_value=0, max_value=2**63), st.tuples(TEXT, TEXT))
def test_a_continue_token_round_trips(rv: int, key: tuple[str, str]) -> None:
    assert store.decode_continue(store.encode_continue(rv, key)) == (rv, key)


@fuzz_props.bounded(200)
@given(st.one_of(TEXT, st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijk_-=0123")))
def test_any_continue_token_resumes_a_list_or_is_refused(token: str) -> None:
    fuzz_kubeapi.check_continue(token)


# --- admission -------------------------------------------------------------------------------

WRITE_KINDS = st.sampled_from(
    [
        ("v1", "Service"),
        ("v1", "Endpoints"),
        ("v1", "Namespace"),
        ("v1", "Node"),
        ("v1", "Pod"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("networking.k8s.io/v1", "Ingress"),
        ("navigator.avito.ru/v1", "Nexus"),
        ("navigator.avito.ru/v1", "CanaryRelease"),
        ("navigator.avito.ru/v1", "Gateway"),
        ("v2", "Service"),
        ("v1", "Nope"),
    ]
)
META = st.fixed_dictionaries(
    {},
    optional={
        "name": maybe(st.sampled_from(["item", "echo", "new-1", "Bad_Name", "", "a" * 300])),
        "namespace": maybe(st.sampled_from(["shop", "web", "default", "x"])),
        "generateName": maybe(st.sampled_from(["gen-", "Bad"])),
        "labels": maybe(st.dictionaries(TEXT, maybe(TEXT), max_size=2)),
        "resourceVersion": maybe(st.sampled_from(["1", "999", ""])),
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        body = copy.deepcopy(draw(st.sampled_from(fuzz_kubeapi.manifests())))
    else:
        api_version, kind = draw(WRITE_KINDS)
        body = {"apiVersion": api_version, "kind": kind}
    if draw(st.booleans()):
        body["metadata"] = draw(maybe(META))
    for field in draw(
        st.lists(st.sampled_from(["spec", "status", "subsets", "extra"]), max_size=2)
    ):
        body[field] = draw(json_values(keys=st.sampled_from(["ports", "type", "port", "x"])))
    return body


@fuzz_props.bounded(200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(fuzz_kubeapi.OPS),
            st.sampled_from(fuzz_kubeapi.MODES),
            bodies(),
            st.integers(0, 50),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_the_store_admits_only_valid_objects(ops: list[tuple[str, Any, Any, int]]) -> None:
    st_ = fuzz_kubeapi.loaded_store()
    for op, mode, body, pick in ops:
        try:
            fuzz_kubeapi.store_op(st_, op, mode, body, pick)
        except errors.ApiError as exc:
            assert 400 <= exc.code < 500, exc.status()


@fuzz_props.bounded(150)
@given(st.integers(0, 255), st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=80))))
def test_arbitrary_bytes_reach_every_group(flags: int, frames: list[harness.Frame]) -> None:
    fuzz_kubeapi.test_one_input(harness.join_frames(flags, frames))


# --- regressions -----------------------------------------------------------------------------

SVC = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "item", "namespace": "shop"},
    "spec": {"ports": [{"name": "http", "port": 80}]},
}


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([{"op": "add", "path": 5, "value": 1}], id="path-not-a-string"),
        pytest.param([{"op": "move", "from": {}, "path": "/a"}], id="from-not-a-string"),
        pytest.param([{"op": "remove", "path": ""}], id="remove-the-whole-document"),
        pytest.param([{"op": "move", "from": "", "path": "/a"}], id="move-the-whole-document"),
        pytest.param([{"op": "remove", "path": "/spec/ports/²"}], id="index-superscript-digit"),
        pytest.param([{"op": "remove", "path": "/spec/ports/" + "9" * 5000}], id="index-huge"),
    ],
)
def test_a_bad_json_patch_is_a_bad_request(ops: list[dict[str, Any]]) -> None:
    # NOTE: found by fuzz_kubeapi: AttributeError, IndexError and ValueError, each a 500 over
    # HTTP.
    with pytest.raises(errors.ApiError) as raised:
        patch.apply(patch.JSON, copy.deepcopy(SVC), ops)
    assert raised.value.code == 400


@pytest.mark.parametrize(
    ("write", "body"),
    [
        pytest.param("create", {**SVC, "metadata": "x"}, id="create-metadata-a-string"),
        pytest.param("update", {**SVC, "metadata": ["x"]}, id="update-metadata-a-list"),
        pytest.param(
            "update",
            {**SVC, "metadata": {"name": "item", "namespace": [1]}},
            id="update-namespace-a-list",
        ),
        pytest.param("create", 5, id="not-an-object"),
    ],
)
def test_a_body_with_malformed_metadata_is_refused(write: str, body: Any) -> None:
    # NOTE: found by fuzz_kubeapi: the store read metadata before admission checked it
    # (AttributeError; TypeError for an unhashable namespace).
    st_ = fuzz_kubeapi.loaded_store()
    with pytest.raises(errors.ApiError) as raised:
        getattr(st_, write)(body)
    assert 400 <= raised.value.code < 500


@pytest.mark.parametrize(
    ("body", "check"),
    [
        pytest.param(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": None},
            lambda obj: obj["spec"]["type"] == "ClusterIP" and obj["spec"]["clusterIP"],
            id="service-spec-null",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "b"},
                "spec": {"ports": [None]},
            },
            lambda obj: obj["spec"]["ports"] == [{"protocol": "TCP"}],
            id="service-port-null",
        ),
        pytest.param(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}, "status": None},
            lambda obj: obj["status"] == {"phase": "Active"},
            id="namespace-status-null",
        ),
    ],
)
def test_null_is_unset_and_defaulted(body: dict[str, Any], check: Any) -> None:
    # NOTE: found by fuzz_kubeapi: a null field reached the defaulters (AttributeError on
    # None.setdefault), a 500 over HTTP. Null is "unset", as decoding into a Go struct does.
    st_ = store.Store()
    assert check(st_.create(body))


@pytest.mark.parametrize(
    "preconditions", ["apiVersion", ["uid"], 5], ids=["string", "list", "number"]
)
def test_delete_preconditions_not_an_object_are_a_bad_request(preconditions: Any) -> None:
    # NOTE: found by fuzz_kubeapi_http: DeleteOptions {"preconditions": "apiVersion"} was an
    # AttributeError, a 500.
    st_ = fuzz_kubeapi.loaded_store()
    rt = st_.resource("", "endpoints")
    with pytest.raises(errors.ApiError) as raised:
        st_._delete(rt, "shop", "item", {"preconditions": preconditions})
    assert raised.value.code == 400
    assert st_.get("v1", "Endpoints", "item", "shop")["metadata"]["name"] == "item"


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("kubeapi", tmp_path), "kubeapi")
