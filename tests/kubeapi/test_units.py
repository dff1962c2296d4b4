"""Table-driven tests of the pure parts: patches, selectors, the store's watch semantics."""

from __future__ import annotations

from typing import Any

import pytest

from navigator.kubeapi import errors, patch, selectors
from navigator.kubeapi.store import Store


@pytest.mark.parametrize(("doc", "ops", "want"), [
    ({"a": 1}, [{"op": "add", "path": "/b", "value": 2}], {"a": 1, "b": 2}),
    ({"a": [1, 3]}, [{"op": "add", "path": "/a/1", "value": 2}], {"a": [1, 2, 3]}),
    ({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}], {"a": [1, 2]}),
    ({"a": 1, "b": 2}, [{"op": "remove", "path": "/a"}], {"b": 2}),
    ({"a": {"x~y/z": 1}}, [{"op": "replace", "path": "/a/x~0y~1z", "value": 5}],
     {"a": {"x~y/z": 5}}),
    ({"a": 1}, [{"op": "move", "from": "/a", "path": "/b"}], {"b": 1}),
    ({"a": [1]}, [{"op": "copy", "from": "/a", "path": "/b"}], {"a": [1], "b": [1]}),
    ({"a": 1}, [{"op": "test", "path": "/a", "value": 1},
                {"op": "replace", "path": "/a", "value": 2}], {"a": 2}),
])
def test_json_patch(doc: Any, ops: Any, want: Any) -> None:
    before = repr(doc)
    assert patch.json_patch(doc, ops) == want
    assert repr(doc) == before  # the input is never mutated


@pytest.mark.parametrize(("ops", "code"), [
    ([{"op": "remove", "path": "/missing"}], 400),
    ([{"op": "replace", "path": "/missing", "value": 1}], 400),
    ([{"op": "test", "path": "/a", "value": 2}], 422),
    ([{"op": "add", "path": "/a/b/c", "value": 1}], 400),
    ([{"op": "frobnicate", "path": "/a"}], 400),
    ({"op": "add"}, 400),
])
def test_json_patch_errors(ops: Any, code: int) -> None:
    with pytest.raises(errors.ApiError) as e:
        patch.json_patch({"a": 1}, ops)
    assert e.value.code == code


@pytest.mark.parametrize(("target", "body", "want"), [
    ({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}, {"a": {"c": 2, "d": 3}}),
    ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
])
def test_merge_patch(target: Any, body: Any, want: Any) -> None:
    assert patch.merge_patch(target, body) == want
    assert patch.apply(patch.STRATEGIC + "; charset=utf-8", target, body) == want


@pytest.mark.parametrize(("label_selector", "field_selector", "want"), [
    ("", "", {"a", "b", "c"}),
    ("app=web", "", {"a", "b"}),
    ("app==web,tier=front", "", {"a"}),
    ("app!=web", "", {"c"}),
    ("tier", "", {"a", "c"}),
    ("!tier", "", {"b"}),
    ("tier in (front, back)", "", {"a", "c"}),
    ("tier notin (front),app", "", {"b", "c"}),
    ("", "metadata.name=b", {"b"}),
    ("", "metadata.namespace!=x", {"a", "b"}),
    ("app=web", "metadata.name!=a", {"b"}),
])
def test_selectors(label_selector: str, field_selector: str, want: set[str]) -> None:
    objs = [
        {"metadata": {"name": "a", "namespace": "y", "labels": {"app": "web", "tier": "front"}}},
        {"metadata": {"name": "b", "namespace": "y", "labels": {"app": "web"}}},
        {"metadata": {"name": "c", "namespace": "x", "labels": {"app": "db", "tier": "back"}}},
    ]
    sel = selectors.parse(label_selector, field_selector)
    assert {o["metadata"]["name"] for o in objs if sel.matches(o)} == want


@pytest.mark.parametrize(("label_selector", "field_selector"), [
    ("a in b", ""), ("a=(", ""), ("", "spec.type=ClusterIP"),
])
def test_bad_selectors(label_selector: str, field_selector: str) -> None:
    with pytest.raises(errors.ApiError) as e:
        selectors.parse(label_selector, field_selector)
    assert e.value.code == 400


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"ports": [{"port": 80}]}}


def drain(w: Any) -> list[tuple[str, str]]:
    out = [(t, o["metadata"]["name"]) for t, o in w.events]
    w.events.clear()
    return out


async def test_watch_follows_selector_transitions() -> None:
    store = Store()
    sel = selectors.parse("app=web", "")
    w = store._watch(store.resource("", "services"), "default", sel, store.rv)
    store.create(svc("a", app="web"))
    store.create(svc("b", app="db"))
    store.create(svc("c", "other", app="web"))  # other namespace
    store.update(svc("b", app="web"))  # starts matching
    store.update(svc("a", app="db"))  # stops matching
    store.update(svc("a", app="db"))  # no-op: no event at all
    store.delete("v1", "Service", "b")
    assert drain(w) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]


async def test_slow_watcher_is_closed_not_blocking() -> None:
    store = Store(watch_queue_limit=3)
    rt = store.resource("", "services")
    w = store._watch(rt, None, selectors.parse("", ""), store.rv)
    for i in range(5):
        store.create(svc(f"s{i}"))  # writers never wait for the watcher
    assert w.closed and w.overflowed and len(w.events) == 3
    assert store.open_watches() == 0


async def test_watch_from_history_and_expiry() -> None:
    store = Store(history_limit=2)
    rt = store.resource("", "services")
    start = store.rv
    for i in range(3):
        store.create(svc(f"s{i}"))
    with pytest.raises(errors.ApiError) as e:  # the first event fell out of the history
        store._watch(rt, None, selectors.parse("", ""), start)
    assert (e.value.code, e.value.reason) == (410, "Expired")
    w = store._watch(rt, None, selectors.parse("", ""), start + 1)
    assert drain(w) == [("ADDED", "s1"), ("ADDED", "s2")]


async def test_list_snapshot_and_continue() -> None:
    store = Store()
    rt = store.resource("", "services")
    everything = selectors.parse("", "")
    for i in range(4):
        store.create(svc(f"s{i}"))
    first = store._list(rt, None, everything, limit=2)
    assert [o["metadata"]["name"] for o in first.items] == ["s0", "s1"]
    assert first.remaining == 2
    store.delete("v1", "Service", "s2")  # after the first page: still in the snapshot
    store.create(svc("s9"))
    rest = store._list(rt, None, everything, continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in rest.items] == ["s2", "s3"]
    assert rest.rv == first.rv
    store.compact()
    with pytest.raises(errors.ApiError) as e:
        store._list(rt, None, everything, continue_token=first.continue_token)
    assert e.value.code == 410


async def test_namespaces_appear_and_cascade() -> None:
    store = Store()
    store.create(svc("a", "apps"))
    assert [n["metadata"]["name"] for n in store.list("v1", "Namespace")] == ["apps", "default"]
    assert store.get("v1", "Namespace", "apps", None)["status"]["phase"] == "Active"
    store.delete("v1", "Namespace", "apps", None)
    assert store.list("v1", "Service") == []
