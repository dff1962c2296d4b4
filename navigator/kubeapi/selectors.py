"""Label and field selectors, parsed once per request and matched against stored objects.

Both lists and watches filter with the same compiled selector, so a watch sees exactly the
objects a list with the same selectors returns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from navigator.kubeapi import errors

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")

Requirement = Callable[[dict[str, str]], bool]


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside a ``(...)`` value set."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i].strip())
            start = i + 1
    terms.append(text[start:].strip())
    return [t for t in terms if t]


def _requirement(term: str) -> Requirement:
    if m := _SET_RE.match(term):
        key, op = m.group(1), m.group(2)
        values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(term):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_RE.match(term):
        negate, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negate
    raise errors.bad_request(f"unable to parse requirement: {term!r}")


@dataclass(frozen=True)
class Selector:
    """Conjunction of label and field requirements; the empty selector matches everything."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Callable[[dict[str, Any]], bool], ...] = ()

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        return all(r(labels) for r in self.labels) and all(f(meta) for f in self.fields)


_FIELD_RE = re.compile(r"^(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(.*)$")


def _field(term: str) -> Callable[[dict[str, Any]], bool]:
    m = _FIELD_RE.match(term)
    if not m:
        name = re.split(r"!=|==|=", term, maxsplit=1)[0]
        raise errors.bad_request(f'"{name}" is not a known field selector: only '
                                 '"metadata.name", "metadata.namespace"')
    attr, op, value = m.group(1).split(".", 1)[1], m.group(2), m.group(3).strip()
    if op == "!=":
        return lambda meta: meta.get(attr, "") != value
    return lambda meta: meta.get(attr, "") == value


def parse(label_selector: str | None, field_selector: str | None) -> Selector:
    return Selector(
        labels=tuple(_requirement(t) for t in _split_terms(label_selector or "")),
        fields=tuple(_field(t) for t in _split_terms(field_selector or "")),
    )
