"""Fuzz target: the local Kubernetes API server's parsers, below HTTP.

Four groups, chosen by the flags byte of the ``harness`` frames (``flags % 4``); the
documented error of each is ``errors.ApiError`` (a Status answer):

0. label and field selectors (``selectors.parse``; frames 0 and 1 as UTF-8), matched against
   the lab's objects;
1. patches (``patch.apply``; frame 0 the content type, 1 the target JSON, 2 the patch JSON):
   the target is never mutated, and a merge patch applied twice gives what it gave once;
2. continue tokens (``store.decode_continue``; frame 0), and a list resumed from one;
3. admission through the ``Store`` (frames in order, on a store holding the lab's east
   manifests): the control byte's bits 0-1 pick create, update, patch-then-update (a merge
   patch or, for a JSON list, a JSON patch of the stored object the bits 4-7 index, as the
   server's PATCH does) or delete, bits 2-3 the field validation (Strict, Warn, Ignore).
   Whatever the store accepts is valid against its kind's schema, named as Kubernetes names
   objects, readable back, and carries the store's newest resourceVersion (unless the write
   changed nothing).

Run: ``python fuzz/fuzz_kubeapi.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/kubeapi`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from typing import Any

import harness
import yaml

with harness.instrumented(__name__):
    from navigator.kubeapi import errors, patch, resources, selectors, store, validation

MODES: tuple[store.FieldValidation, ...] = ("Strict", "Warn", "Ignore")
OPS = ("create", "update", "patch", "delete")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

EXTRA = (
    "metadata",
    "spec",
    "status",
    "labels",
    "annotations",
    "name",
    "namespace",
    "generateName",
    "resourceVersion",
    "apiVersion",
    "kind",
    "v1",
    "Service",
    "Nexus",
    "navigator.avito.ru/v1",
    "op",
    "path",
    "from",
    "value",
    "add",
    "remove",
    "replace",
    "move",
    "copy",
    "test",
    "/-",
    "/metadata/labels",
    "/spec/ports/0",
    "~0",
    "~1",
)
"""Keys and values the store and the patches compare against, for the mutator."""

_MANIFESTS: list[dict[str, Any]] = []


def manifests() -> list[dict[str, Any]]:
    """The lab's east objects, parsed once."""
    if not _MANIFESTS:
        for path in sorted((harness.EXAMPLES / "east").glob("*.yaml")):
            _MANIFESTS.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return _MANIFESTS


def loaded_store() -> store.Store:
    st = store.Store()
    for doc in manifests():
        st.create(copy.deepcopy(doc))
    return st


@functools.cache
def shared_store() -> store.Store:
    """A store that the read-only groups (selectors, continue tokens) use, never written."""
    return loaded_store()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def every_object(st: store.Store) -> list[tuple[resources.ResourceType, dict[str, Any]]]:
    return [(rt, obj) for rt in resources.RESOURCES for obj in st._objects[rt].values()]


# --- 0: selectors ---------------------------------------------------------------------------


def check_selectors(label: str, field: str) -> selectors.Selector | None:
    try:
        sel = selectors.parse(label, field)
    except errors.ApiError as exc:
        assert exc.code == 400, exc.status()
        return None
    for _, obj in every_object(shared_store()):
        assert isinstance(sel.matches(obj), bool)
    return sel


# --- 1: patches -----------------------------------------------------------------------------


def check_patch(content_type: str, target: Any, body: Any) -> Any:
    before = copy.deepcopy(target)
    body_before = copy.deepcopy(body)
    try:
        out = patch.apply(content_type, target, body)
    except errors.ApiError as exc:
        assert 400 <= exc.code < 500, exc.status()
        out = None
    else:
        media = content_type.split(";", 1)[0].strip()
        if media in (patch.MERGE, patch.STRATEGIC):
            assert patch.merge_patch(out, body) == out, "a merge patch is not idempotent"
    assert target == before, "the patch mutated its target"
    assert body == body_before, "the patch mutated itself"
    return out


# --- 2: continue tokens ---------------------------------------------------------------------


def check_continue(token: str) -> None:
    try:
        rv, key = store.decode_continue(token)
    except errors.ApiError as exc:
        assert exc.code == 400, exc.status()
        return
    assert store.decode_continue(store.encode_continue(rv, key)) == (rv, key)
    st = shared_store()
    for rt in resources.RESOURCES:
        try:
            st._list(rt, None, selectors.Selector(), limit=2, continue_token=token)
        except errors.ApiError as exc:
            assert exc.code in (400, 410), exc.status()


# --- 3: the store ---------------------------------------------------------------------------


def check_admitted(st: store.Store, obj: dict[str, Any], last_rv: int) -> int:
    """``obj``, as a write returned it, is what Kubernetes would have stored."""
    rt = resources.by_kind(obj["apiVersion"], obj["kind"])
    assert rt is not None, (obj["apiVersion"], obj["kind"])
    problems = validation.Problems()
    rt.schema.check(obj, "", problems)
    assert not problems.wrong_type and not problems.unknown, problems
    meta = obj["metadata"]
    assert NAME.match(meta["name"]) and len(meta["name"]) <= 253, meta["name"]
    namespace = meta.get("namespace") if rt.namespaced else None
    assert (namespace is not None) == rt.namespaced, meta
    rv = int(meta["resourceVersion"])
    # NOTE: a write that changes nothing returns the stored object, its version unchanged.
    assert rv == st.rv if st.rv != last_rv else rv <= last_rv, (rv, last_rv, st.rv)
    assert st.get(obj["apiVersion"], obj["kind"], meta["name"], namespace) == obj
    return rv


def store_op(st: store.Store, op: str, mode: store.FieldValidation, body: Any, pick: int) -> None:
    last_rv = st.rv
    if op == "create":
        if not isinstance(body, dict):
            return
        out = st.create(body, field_validation=mode)
    elif op == "update":
        if not isinstance(body, dict):
            return
        out = st.update(body, field_validation=mode)
    elif not (objects := every_object(st)):
        return
    elif op == "patch":
        rt, current = objects[pick % len(objects)]
        media = patch.JSON if isinstance(body, list) else patch.MERGE
        patched = patch.apply(media, copy.deepcopy(current), body)
        ns = current["metadata"].get("namespace")
        out, _ = st._update(rt, ns, current["metadata"]["name"], patched, mode)
    else:
        rt, current = objects[pick % len(objects)]
        meta = current["metadata"]
        st.delete(rt.api_version, rt.kind, meta["name"], meta.get("namespace"))
        return
    check_admitted(st, out, last_rv)


def check_store(frames: list[harness.Frame]) -> None:
    st = loaded_store()
    for control, payload in frames:
        ok, body = harness.json_value(payload)
        if not ok:
            continue
        op, mode = OPS[control & 3], MODES[((control >> 2) & 3) % 3]
        try:
            store_op(st, op, mode, body, control >> 4)
        except errors.ApiError as exc:
            assert 400 <= exc.code < 500, exc.status()


def test_one_input(data: bytes) -> None:
    flags, frames = harness.split_frames(data)
    parts = [payload for _, payload in frames]
    mode = flags % 4
    if mode == 0:
        check_selectors(*(_text(p) for p in [*parts, b"", b""][:2]))
    elif mode == 1:
        content_type, target, body = [*parts, b"", b"", b""][:3]
        ok_target, target_value = harness.json_value(target)
        ok_body, body_value = harness.json_value(body)
        if ok_target and ok_body:
            check_patch(_text(content_type), target_value, body_value)
    elif mode == 2:
        check_continue(_text(parts[0]) if parts else "")
    else:
        check_store(frames)


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    harness.run(test_one_input, mutator=harness.frames_mutator(EXTRA))
