"""Kubernetes ``Status`` errors, worded as a real API server words them.

Clients branch on ``code`` and ``reason`` (the official client raises ``ApiException`` with
the code; informers relist on 410 ``Expired``; kubectl prints ``message``), so every failure
of the local server is one of these, raised by the store or the HTTP layer and rendered once.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failure that the server answers with a ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            out["details"] = self.details
        return out


def _details(qualified: str, name: str, group: str, **more: Any) -> dict[str, Any]:
    kind = qualified.split(".", 1)[0]
    out: dict[str, Any] = {"name": name, "kind": kind, **more}
    if group:
        out["group"] = group
    return out


def not_found(qualified: str, name: str, group: str = "") -> ApiError:
    """``qualified`` is ``plural`` or ``plural.group`` (``services``, ``nexuses.navigator...``)."""
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found',
                    _details(qualified, name, group))


def already_exists(qualified: str, name: str, group: str = "") -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists',
                    _details(qualified, name, group))


def conflict(qualified: str, name: str, group: str = "", why: str = "") -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    message = f'Operation cannot be fulfilled on {qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(qualified, name, group))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(
    kind: str, group: str, name: str, causes: list[tuple[str, str, str]]
) -> ApiError:
    """422 ``Invalid``; each cause is ``(field, reason, message)`` like ``FieldValueRequired``."""
    qualified = f"{kind}.{group}" if group else kind
    text = "; ".join(f"{fld}: {msg}" for fld, _, msg in causes)
    if len(causes) > 1:
        text = f"[{', '.join(f'{fld}: {msg}' for fld, _, msg in causes)}]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
