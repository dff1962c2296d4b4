"""The in-memory object store behind the local API server: objects, history, watches.

It plays etcd plus the apiserver's registry: one increasing resourceVersion counter for the
whole server, an event history per resource type (so watches can resume from any retained
resourceVersion and lists can be served at an older one), and the watchers to fan events out
to.

Invariants:

* Every method is synchronous and runs on the event loop thread. A write and the fan-out of
  its event happen with no ``await`` in between, and ``watch`` takes its replay slice and
  subscribes in one step, so a watcher sees every event exactly once, in order.
* Stored objects are never mutated in place: a write builds a new dict. Events and the current
  state may therefore share dicts. Public methods hand out deep copies.
* ``History.compacted_rv`` is the oldest resourceVersion a watch may resume from: every event
  of that resource with a larger resourceVersion is in ``History.events``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import copy
import datetime
import ipaddress
import json
import re
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from navigator.kubeapi import errors, resources
from navigator.kubeapi.resources import ResourceType
from navigator.kubeapi.selectors import Selector
from navigator.kubeapi.validation import Problems

Key = tuple[str, str]  # (namespace or "" when cluster-scoped, name)
Obj = dict[str, Any]
FieldValidation = Literal["Strict", "Warn", "Ignore"]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GO_TYPES = {"integer": "int64", "string": "string", "boolean": "bool", "array": "[]interface {}",
             "object": "map[string]interface {}", "number": "float64",
             "int-or-string": "intstr.IntOrString"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj  # the new state; for DELETED the last state, stamped with the deletion's rv
    old: Obj | None  # the previous state, None for ADDED


@dataclass
class History:
    events: deque[Event] = field(default_factory=deque)
    compacted_rv: int = 0


class Watcher:
    """One open watch: a bounded queue of (type, object) filled synchronously by the store.

    The HTTP handler drains ``events`` whenever ``wakeup`` is set. A watcher whose queue
    overflows is closed (its client resumes from its last resourceVersion), so a slow client
    never blocks or bloats a writer.
    """

    def __init__(self, rt: ResourceType, namespace: str | None, selector: Selector,
                 max_queue: int) -> None:
        self.rt = rt
        self.namespace = namespace
        self.selector = selector
        self.max_queue = max_queue
        self.events: deque[tuple[str, Obj]] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def matches(self, obj: Obj) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.selector.matches(obj)

    def push(self, type_: str, obj: Obj) -> None:
        self.events.append((type_, obj))
        self.wakeup.set()

    def offer(self, ev: Event) -> None:
        """Translate a store event through this watch's filter, as Kubernetes does: an object
        that starts matching is ADDED, one that stops matching is DELETED."""
        if self.closed:
            return
        new_m = self.matches(ev.obj)
        old_m = ev.old is not None and self.matches(ev.old)
        if ev.type == "MODIFIED":
            type_ = {(True, True): "MODIFIED", (False, True): "ADDED",
                     (True, False): "DELETED"}.get((old_m, new_m))
        else:
            type_ = ev.type if new_m else None
        if type_ is None:
            return
        if len(self.events) >= self.max_queue:
            self.overflowed = True
            self.close()
            return
        self.push(type_, ev.obj)

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()


def encode_continue(rv: int, key: Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(raw["rv"]), (str(raw["start"][0]), str(raw["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise errors.bad_request("continue key is not valid: invalid token") from None


@dataclass
class ListResult:
    rv: int
    items: list[Obj]
    continue_token: str = ""
    remaining: int | None = None


class Store:
    def __init__(self, *, history_limit: int = 100_000, watch_queue_limit: int = 1_000,
                 service_cidr: str = "10.96.0.0/16") -> None:
        self.history_limit = history_limit
        self.watch_queue_limit = watch_queue_limit
        self._rv = 0
        self._objects: dict[ResourceType, dict[Key, Obj]] = {rt: {} for rt in resources.RESOURCES}
        self._history: dict[ResourceType, History] = {rt: History() for rt in resources.RESOURCES}
        self._watchers: dict[ResourceType, set[Watcher]] = {rt: set() for rt in resources.RESOURCES}
        self._network = ipaddress.ip_network(service_cidr)
        self._next_ip = 10  # offset into the range; the first addresses are left free
        self._ns = self.resource("", "namespaces")
        self._create(self._ns, None, {"metadata": {"name": "default"}}, "Strict")

    # --- lookup ------------------------------------------------------------------------------

    @property
    def rv(self) -> int:
        return self._rv

    @staticmethod
    def resource(group: str, plural: str) -> ResourceType:
        for rt in resources.RESOURCES:
            if rt.group == group and rt.plural == plural:
                return rt
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")

    @staticmethod
    def _type_of(obj: Obj) -> ResourceType:
        if not isinstance(obj, dict):
            raise errors.bad_request("the object must be a JSON object")
        rt = resources.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None:
            raise errors.bad_request(
                f'no kind "{obj.get("kind")}" is registered for version "{obj.get("apiVersion")}"'
            )
        return rt

    def open_watches(self) -> int:
        return sum(len(ws) for ws in self._watchers.values())

    # --- public, for tests and loaders: object in, deep copy out -----------------------------

    def create(self, obj: Obj, *, field_validation: FieldValidation = "Strict") -> Obj:
        rt = self._type_of(obj)
        ns = _namespace_of(obj) if rt.namespaced else None
        return copy.deepcopy(self._create(rt, ns, obj, field_validation)[0])

    def update(self, obj: Obj, *, field_validation: FieldValidation = "Strict") -> Obj:
        rt = self._type_of(obj)
        meta = _unchecked_meta(obj)
        ns = _namespace_of(obj) if rt.namespaced else None
        return copy.deepcopy(
            self._update(rt, ns, str(meta.get("name", "")), obj, field_validation)[0]
        )

    def delete(self, api_version: str, kind: str, name: str,
               namespace: str | None = "default") -> Obj:
        rt = resources.by_kind(api_version, kind)
        if rt is None:
            raise errors.bad_request(f"unknown kind {api_version}/{kind}")
        return copy.deepcopy(self._delete(rt, namespace if rt.namespaced else None, name, {}))

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = "default") -> Obj:
        rt = resources.by_kind(api_version, kind)
        if rt is None:
            raise errors.bad_request(f"unknown kind {api_version}/{kind}")
        return copy.deepcopy(self._get(rt, namespace if rt.namespaced else None, name))

    def list(self, api_version: str, kind: str,
             namespace: str | None = None) -> builtins.list[Obj]:
        rt = resources.by_kind(api_version, kind)
        if rt is None:
            raise errors.bad_request(f"unknown kind {api_version}/{kind}")
        return copy.deepcopy(self._list(rt, namespace, Selector()).items)

    def compact(self) -> None:
        """Forget all history: a watch or continue token older than the current rv gets 410."""
        for hist in self._history.values():
            hist.events.clear()
            hist.compacted_rv = self._rv

    def drop_watches(self) -> int:
        dropped = 0
        for ws in self._watchers.values():
            for w in list(ws):
                w.close()
                dropped += 1
            ws.clear()
        return dropped

    # --- the registry ------------------------------------------------------------------------

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return (namespace or "" if rt.namespaced else "", name)

    def _get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects[rt].get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.qualified, name, rt.group)
        return obj

    def _record(self, rt: ResourceType, type_: str, key: Key, obj: Obj, old: Obj | None) -> None:
        """Commit one write: state, history, fan-out. The caller has already bumped the rv."""
        if type_ == "DELETED":
            del self._objects[rt][key]
        else:
            self._objects[rt][key] = obj
        ev = Event(self._rv, type_, obj, old)
        hist = self._history[rt]
        hist.events.append(ev)
        while len(hist.events) > self.history_limit:
            hist.compacted_rv = hist.events.popleft().rv
        for w in list(self._watchers[rt]):
            w.offer(ev)
            if w.closed:
                self._watchers[rt].discard(w)

    def _admit(self, rt: ResourceType, obj: Any, mode: FieldValidation,
               warnings: builtins.list[str]) -> Obj:
        """Validate against the kind's schema; returns the object with unknown fields pruned."""
        if not isinstance(obj, dict):
            raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled "
                                     f"as a {rt.kind}: body must be a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, "", rt.api_version) or kind not in (None, "", rt.kind):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})" if api_version != rt.api_version else
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        problems = Problems()
        pruned: Obj = rt.schema.check(obj, "", problems)
        if problems.wrong_type:
            path, value, want = problems.wrong_type[0]
            got = _json_type(value)
            name = str(_unchecked_meta(obj).get("name", ""))
            if rt.crd:
                raise errors.invalid(rt.kind, rt.group, name, [
                    (path, "FieldValueTypeInvalid",
                     f'Invalid value: "{got}": {path} in body must be of type {want}: "{got}"')
                    for path, value, want in problems.wrong_type
                ])
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: '
                f"cannot unmarshal {got} into Go struct field {rt.kind}.{path} of type "
                f"{_GO_TYPES.get(want, want)}"
            )
        if problems.unknown:
            text = ", ".join(f'unknown field "{p}"' for p in problems.unknown)
            if mode == "Strict":
                raise errors.bad_request(f"strict decoding error: {text}")
            if mode == "Warn":
                warnings.extend(f'unknown field "{p}"' for p in problems.unknown)
        pruned["apiVersion"], pruned["kind"] = rt.api_version, rt.kind
        pruned["metadata"] = dict(pruned.get("metadata") or {})
        return pruned

    def _check_namespace(self, rt: ResourceType, namespace: str | None, meta: Obj) -> None:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        meta["namespace"] = namespace

    def _create(self, rt: ResourceType, namespace: str | None, body: Any,
                mode: FieldValidation) -> tuple[Obj, builtins.list[str]]:
        warnings: builtins.list[str] = []
        obj = self._admit(rt, body, mode, warnings)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = str(meta.get("name") or "")
        if not name:
            raise errors.invalid(rt.kind, rt.group, "", [
                ("metadata.name", "FieldValueRequired",
                 "Required value: name or generateName is required")])
        if len(name) > 253 or not _NAME_RE.match(name):
            raise errors.invalid(rt.kind, rt.group, name, [
                ("metadata.name", "FieldValueInvalid",
                 f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                 "case alphanumeric characters, '-' or '.', and must start and end with an "
                 "alphanumeric character")])
        self._check_namespace(rt, namespace, meta)
        key = self._key(rt, namespace, name)
        if key in self._objects[rt]:
            raise errors.already_exists(rt.qualified, name, rt.group)
        if rt.defaulter is not None:
            rt.defaulter(obj, None, self)
        if rt.namespaced and namespace and ("", namespace) not in self._objects[self._ns]:
            # Namespaces spring into existence on first use, so tests need no setup step.
            self._create(self._ns, None, {"metadata": {"name": namespace}}, "Strict")
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        self._rv += 1
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                    creationTimestamp=now(), generation=1)
        self._record(rt, "ADDED", key, obj, None)
        return obj, warnings

    def _update(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
                mode: FieldValidation, *, subresource: str = "") -> tuple[Obj, builtins.list[str]]:
        key = self._key(rt, namespace, name)
        old = self._objects[rt].get(key)
        if old is None:
            if rt.allow_create_on_update and not subresource:
                return self._create(rt, namespace, body, mode)
            raise errors.not_found(rt.qualified, name, rt.group)
        warnings: builtins.list[str] = []
        obj = self._admit(rt, body, mode, warnings)
        meta = obj["metadata"]
        meta.setdefault("name", name)
        if meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({name})")
        self._check_namespace(rt, namespace, meta)
        old_meta = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise errors.conflict(rt.qualified, name, rt.group)
        if rt.status_subresource:
            # The main resource ignores status; /status changes only status.
            if subresource == "status":
                obj = {**old, "status": obj.get("status")}
                if obj["status"] is None:
                    del obj["status"]
                meta = obj["metadata"] = dict(old_meta)
            elif "status" in old:
                obj["status"] = old["status"]
            else:
                obj.pop("status", None)
        if rt.defaulter is not None:
            rt.defaulter(obj, old, self)
        # Fields the server owns survive any update.
        for k in ("uid", "creationTimestamp", "generation"):
            meta[k] = old_meta[k]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if obj == old:
            return old, warnings  # a no-op write changes nothing and emits no event
        if _spec_of(obj) != _spec_of(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._record(rt, "MODIFIED", key, obj, old)
        return obj, warnings

    def _delete(self, rt: ResourceType, namespace: str | None, name: str,
                options: Obj) -> Obj:
        key = self._key(rt, namespace, name)
        old = self._objects[rt].get(key)
        if old is None:
            raise errors.not_found(rt.qualified, name, rt.group)
        pre = options.get("preconditions") or {}
        if not isinstance(pre, dict):
            raise errors.bad_request("DeleteOptions.preconditions: expected an object")
        meta = old["metadata"]
        for field_, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field_) and pre[field_] != meta[field_]:
                raise errors.conflict(rt.qualified, name, rt.group, why=(
                    f"Precondition failed: {label} in precondition: {pre[field_]}, "
                    f"{label} in object meta: {meta[field_]}"))
        if rt is self._ns:
            # A real namespace terminates asynchronously; here its contents go at once.
            for other in resources.RESOURCES:
                if other.namespaced:
                    for okey in [k for k in self._objects[other] if k[0] == name]:
                        self._delete(other, name, okey[1], {})
        self._rv += 1
        obj = {**old, "metadata": {**meta, "resourceVersion": str(self._rv)}}
        self._record(rt, "DELETED", key, obj, old)
        return obj

    def _snapshot(self, rt: ResourceType, rv: int) -> dict[Key, Obj]:
        """The state of one resource type at ``rv``, rolled back from the current state."""
        current = self._objects[rt]
        if rv >= self._rv:
            return current
        hist = self._history[rt]
        if rv < hist.compacted_rv:
            raise errors.expired(
                "The provided continue parameter is too old to display a consistent list "
                "result. You can start a new list without the continue parameter."
            )
        state = dict(current)
        for ev in reversed(hist.events):
            if ev.rv <= rv:
                break
            key = self._key(rt, ev.obj["metadata"].get("namespace"), ev.obj["metadata"]["name"])
            if ev.old is None:
                del state[key]
            else:
                state[key] = ev.old
        return state

    def _list(self, rt: ResourceType, namespace: str | None, selector: Selector, *,
              limit: int = 0, continue_token: str = "", at_rv: int | None = None) -> ListResult:
        rv, start = self._rv if at_rv is None else at_rv, None
        if continue_token:
            rv, start = decode_continue(continue_token)
        state = self._snapshot(rt, rv)
        keys = sorted(k for k in state if namespace is None or k[0] == namespace)
        if start is not None:
            keys = [k for k in keys if k > start]
        items: builtins.list[Obj] = []
        matching = (k for k in keys if selector.matches(state[k]))
        for k in matching:
            if limit and len(items) == limit:
                # There is more: hand out a token that resumes after the last returned key.
                last = items[-1]["metadata"]
                rest = None
                if not selector.labels and not selector.fields:
                    rest = 1 + sum(1 for _ in matching)
                return ListResult(rv, items, encode_continue(rv, (last.get("namespace", ""),
                                                                  last["name"])), rest)
            items.append(state[k])
        return ListResult(rv, items)

    def _watch(self, rt: ResourceType, namespace: str | None, selector: Selector,
               since: int | None) -> Watcher:
        """Open a watch. Atomic: the replay and the subscription happen with no await between.

        ``since`` None sends the current state as synthetic ADDED events, else every retained
        event after ``since`` is replayed (410 Expired when they are no longer all retained).
        """
        hist = self._history[rt]
        if since is not None and since < hist.compacted_rv:
            raise errors.expired(f"too old resource version: {since} ({hist.compacted_rv})")
        w = Watcher(rt, namespace, selector, self.watch_queue_limit)
        if since is None:
            for obj in self._list(rt, namespace, selector).items:
                w.push("ADDED", obj)
        else:
            for ev in _after(hist.events, since):
                w.offer(ev)
        w.max_queue += len(w.events)  # the replay backlog does not count as falling behind
        self._watchers[rt].add(w)
        return w

    def _unwatch(self, w: Watcher) -> None:
        self._watchers[w.rt].discard(w)

    def allocate_cluster_ip(self) -> str:
        used = {
            (svc.get("spec") or {}).get("clusterIP")
            for svc in self._objects[self.resource("", "services")].values()
        }
        size = self._network.num_addresses
        for _ in range(size):
            offset, self._next_ip = self._next_ip, (self._next_ip + 1) % size
            ip = str(self._network[offset])
            if 0 < offset < size - 1 and ip not in used:
                return ip
        raise errors.ApiError(500, "InternalError", "the service IP range is exhausted")


def _unchecked_meta(obj: Obj) -> Obj:
    """The metadata of a body not admitted yet ({} if it is not an object: admission says so)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _namespace_of(obj: Obj) -> str:
    """The namespace a body not admitted yet names ("default" if none, or not a string:
    admission reports the wrong type)."""
    ns = _unchecked_meta(obj).get("namespace")
    return ns if isinstance(ns, str) and ns else "default"


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _after(events: Iterable[Event], rv: int) -> Iterable[Event]:
    return (ev for ev in events if ev.rv > rv)
