"""The three PATCH flavours Kubernetes accepts, applied to plain JSON values.

``jsonpatch`` is not installed in this environment (and the project does not depend on it), so
RFC 6902 is implemented here; it is small. Strategic merge patch is treated as a JSON merge
patch (RFC 7386) whose lists are replaced, never merged by key: an accepted simplification,
since the local server has no Go struct tags telling it the merge keys. ``$patch``-style
directives are therefore not understood.

All functions return new values and never mutate their inputs.
"""

from __future__ import annotations

import copy
from typing import Any

from navigator.kubeapi import errors

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: Any) -> list[str]:
    if path == "":
        return []
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.bad_request(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    # NOTE: ASCII digits ("²" is a digit to isdigit, not to int), and few: int() refuses
    # more than 4300.
    if not token.isascii() or not token.isdigit() or len(token) > 18:
        raise errors.bad_request(f"invalid array index: {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise errors.bad_request(f"array index out of bounds: {i}")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise errors.bad_request(f"doc is missing path: /{'/'.join(tokens)}")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise errors.bad_request(f"doc is missing path: /{'/'.join(tokens)}")


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise errors.bad_request("unable to remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise errors.bad_request(f"Unable to remove nonexistent key: {last}: missing value")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise errors.bad_request(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a deep copy of ``target``; any failing operation fails the whole patch."""
    if not isinstance(ops, list):
        raise errors.bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.bad_request(f"invalid json patch operation: {op!r}")
        kind, tokens = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise errors.bad_request(f"missing value for {kind} operation")
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _get(doc, tokens)  # must exist
            if tokens:
                _remove(doc, tokens)
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _get(doc, tokens) != op["value"]:
                raise errors.ApiError(
                    422, "Invalid", f"testing value {op['path']} failed: test failed"
                )
        else:
            raise errors.bad_request(f"Unexpected kind: {kind}")
    return doc


def apply(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    """Apply a patch body of the given media type (parameters such as charset ignored)."""
    media = content_type.split(";", 1)[0].strip()
    if media == JSON:
        return json_patch(target, patch)
    if media in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise errors.bad_request("merge patch must be a JSON object")
        return merge_patch(target, patch)
    raise errors.ApiError(
        415, "UnsupportedMediaType", f'the body of the request was in an unknown format - '
        f'accepted media types include: {JSON}, {MERGE}, {STRATEGIC}'
    )
