"""Light but real schemas, so the local API server validates as Kubernetes does.

kubectl delegates validation to the server (``?fieldValidation=Strict``) once the OpenAPI
document says the server supports it, so the server must actually reject what a real cluster
rejects: unknown fields (400, ``strict decoding error: unknown field "spec.foo"``) and values
of the wrong type. Without Strict, unknown fields are pruned, as decoding into Go structs (or
CRD structural pruning) does, and reported back as warnings.

A schema is a tree of small immutable nodes. ``check`` never mutates its input; it returns a
pruned copy plus the problems found, so the caller decides what the mode makes of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problems:
    """What a schema check found. Paths are dotted, like Kubernetes prints them."""

    unknown: list[str] = field(default_factory=list)
    # (path, value, expected type name)
    wrong_type: list[tuple[str, Any, str]] = field(default_factory=list)


class Schema:
    """Base node: accepts anything (like ``x-kubernetes-preserve-unknown-fields``)."""

    type_name = "object"
    openapi_type: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        return value

    def openapi(self) -> dict[str, Any]:
        return dict(self.openapi_type)


class AnyValue(Schema):
    """Free-form value."""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Scalar(Schema):
    """A JSON scalar of one Go-ish type. ``null`` is always accepted (it means "unset")."""

    def __init__(self, type_name: str, *py_types: type) -> None:
        self.type_name = type_name
        self._py_types = py_types

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        # bool is an int subclass in Python; JSON keeps them apart, so must we.
        ok = value is None or (
            isinstance(value, self._py_types)
            and not (isinstance(value, bool) and bool not in self._py_types)
        )
        if not ok:
            problems.wrong_type.append((path, value, self.type_name))
        return value

    def openapi(self) -> dict[str, Any]:
        if self.type_name == "int-or-string":
            return {"x-kubernetes-int-or-string": True}
        return {"type": self.type_name}


STR = Scalar("string", str)
INT = Scalar("integer", int)
NUM = Scalar("number", int, float)
BOOL = Scalar("boolean", bool)
INT_OR_STR = Scalar("int-or-string", int, str)


class Array(Schema):
    type_name = "array"

    def __init__(self, item: Schema) -> None:
        self.item = item

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None:
            return value
        if not isinstance(value, list):
            problems.wrong_type.append((path, value, "array"))
            return value
        # NOTE: a null element of a list of objects decodes, in Go, as an empty object.
        empty = isinstance(self.item, Obj)
        return [
            self.item.check({} if v is None and empty else v, f"{path}[{i}]", problems)
            for i, v in enumerate(value)
        ]

    def openapi(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.openapi()}


class Map(Schema):
    """An object with arbitrary keys and values of one schema (labels, selectors)."""

    def __init__(self, value: Schema) -> None:
        self.value = value

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None:
            return value
        if not isinstance(value, dict):
            problems.wrong_type.append((path, value, "object"))
            return value
        return {k: self.value.check(v, _join(path, k), problems) for k, v in value.items()}

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.openapi()}


class Obj(Schema):
    """An object with known fields; any other key is an unknown field (pruned or rejected)."""

    def __init__(self, fields: dict[str, Schema]) -> None:
        self.fields = fields

    def extend(self, more: dict[str, Schema]) -> Obj:
        return Obj({**self.fields, **more})

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None:
            return value
        if not isinstance(value, dict):
            problems.wrong_type.append((path, value, "object"))
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = self.fields.get(key)
            if sub is None:
                problems.unknown.append(_join(path, key))
                continue
            if item is None:
                # NOTE: null means unset: decoding into a Go struct leaves the field at its
                # zero value, which is not stored; defaulting then fills it like any unset one.
                continue
            out[key] = sub.check(item, _join(path, key), problems)
        return out

    def openapi(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {k: v.openapi() for k, v in self.fields.items()},
        }


# --- Shared pieces of the Kubernetes object model --------------------------------------------

OWNER_REFERENCE = Obj(
    {
        "apiVersion": STR,
        "kind": STR,
        "name": STR,
        "uid": STR,
        "controller": BOOL,
        "blockOwnerDeletion": BOOL,
    }
)

OBJECT_META = Obj(
    {
        "name": STR,
        "generateName": STR,
        "namespace": STR,
        "selfLink": STR,
        "uid": STR,
        "resourceVersion": STR,
        "generation": INT,
        "creationTimestamp": STR,
        "deletionTimestamp": STR,
        "deletionGracePeriodSeconds": INT,
        "labels": Map(STR),
        "annotations": Map(STR),
        "ownerReferences": Array(OWNER_REFERENCE),
        "finalizers": Array(STR),
        "managedFields": Array(AnyValue()),
    }
)

OBJECT_REFERENCE = Obj(
    {
        "kind": STR,
        "namespace": STR,
        "name": STR,
        "uid": STR,
        "apiVersion": STR,
        "resourceVersion": STR,
        "fieldPath": STR,
    }
)


def top_level(**more: Schema) -> Obj:
    """A whole object: apiVersion, kind, metadata plus the kind's own top-level fields."""
    return Obj({"apiVersion": STR, "kind": STR, "metadata": OBJECT_META, **more})
