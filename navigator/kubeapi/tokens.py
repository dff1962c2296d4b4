"""Service-account tokens as the local API server issues and reviews them.

The front-end authenticates a sidecar by its pod's projected service-account token, checked
with the cluster's TokenReview API, so the local server must mint tokens with the claims a
real projected token carries and judge them as Kubernetes does (``pkg/serviceaccount`` in
Kubernetes: ``claims.go``, ``jwt.go``): signature, issuer, audiences, expiry with a leeway,
and whether the ServiceAccount, and the pod or secret the token is bound to, still exist with
the same uid.

NOTE: Kubernetes signs with RS256/ES256 so that anyone can verify a token against the
published public keys. These tokens are HS256 (``hmac`` from the standard library) with a
key only the issuing server knows: nobody but that server ever validates them, through
TokenReview, and their holders treat them as opaque, as Kubernetes tells them to. So no
public key needs publishing and no crypto library is needed. A restarted server accepts the
tokens it issued before only if it reads the same key (``load_or_create_key``).

Nothing here does I/O except ``load_or_create_key``; looking objects up is the caller's
``Lookup``.

Exceptions::

    Error
    ├── TokenInvalid   the token does not authenticate; ``str()`` is TokenReview's
    │                  ``status.error``
    └── KeyFileError   the signing key file cannot be used
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LEEWAY = 60
"""Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``, as go-jose's
``DefaultLeeway`` that Kubernetes validates with: a token expired less than a minute ago
still authenticates."""

KEY_BYTES = 32
ALGORITHM = "HS256"

POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NODE_UID_KEY = "authentication.kubernetes.io/node-uid"
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")

Lookup = Callable[[str, str, str], Mapping[str, Any] | None]
"""``(plural, namespace, name)`` -> the stored object, or None if there is none. Nodes are
looked up with namespace ``""``."""


class Error(Exception):
    """Base of this module's errors."""


class TokenInvalid(Error):
    """The token does not authenticate. The message is what TokenReview reports."""


class KeyFileError(Error):
    """The signing key file exists but cannot be used."""


# --- the key ---------------------------------------------------------------------------------


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The signing key kept in ``path``: its contents with surrounding whitespace stripped.

    A missing file is created with a new random key (hex, mode 0600). It is written aside and
    hard-linked into place, so two servers starting together agree on one key and neither
    reads half a file. Raises ``KeyFileError`` for a key shorter than 32 bytes, ``OSError``
    when the file cannot be read or written.
    """
    target = Path(path)
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(generate_key().hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            # Another process that made it first wins: its key is read below.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    key = target.read_bytes().strip()
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"{target}: a token signing key needs at least {KEY_BYTES} bytes")
    return key


# --- claims ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """An object a token names: ``{name, uid}`` in the ``kubernetes.io`` claim."""

    name: str
    uid: str


@dataclass(frozen=True)
class Claims:
    """The claims of a projected service-account token (times are Unix seconds)."""

    issuer: str
    audiences: tuple[str, ...]
    issued_at: int
    not_before: int
    expires_at: int
    namespace: str
    service_account: Ref
    jti: str
    pod: Ref | None = None
    secret: Ref | None = None
    node: Ref | None = None

    @property
    def subject(self) -> str:
        return username(self.namespace, self.service_account.name)

    def payload(self) -> dict[str, Any]:
        k8s: dict[str, Any] = {
            "namespace": self.namespace,
            "serviceaccount": _ref_json(self.service_account),
        }
        for key, ref in (("pod", self.pod), ("secret", self.secret), ("node", self.node)):
            if ref is not None:
                k8s[key] = _ref_json(ref)
        return {
            "aud": list(self.audiences),
            "exp": self.expires_at,
            "iat": self.issued_at,
            "iss": self.issuer,
            "jti": self.jti,
            "kubernetes.io": k8s,
            "nbf": self.not_before,
            "sub": self.subject,
        }

    @classmethod
    def from_payload(cls, payload: Any) -> Claims:
        """Raises ``TokenInvalid`` unless ``payload`` has the shape ``payload()`` gives."""
        try:
            k8s = payload["kubernetes.io"]
            aud = payload["aud"]
            audiences = (aud,) if isinstance(aud, str) else tuple(aud)
            out = cls(
                issuer=payload["iss"],
                audiences=audiences,
                issued_at=payload["iat"],
                not_before=payload["nbf"],
                expires_at=payload["exp"],
                namespace=k8s["namespace"],
                service_account=_ref(k8s["serviceaccount"]),
                jti=payload.get("jti", ""),
                pod=_ref(k8s["pod"]) if "pod" in k8s else None,
                secret=_ref(k8s["secret"]) if "secret" in k8s else None,
                node=_ref(k8s["node"]) if "node" in k8s else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise TokenInvalid("invalid bearer token") from exc
        strings = (out.issuer, out.namespace, out.jti, *out.audiences)
        numbers = (out.issued_at, out.not_before, out.expires_at)
        if not all(isinstance(s, str) for s in strings) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in numbers
        ):
            raise TokenInvalid("invalid bearer token")
        return out


def _ref_json(ref: Ref) -> dict[str, str]:
    return {"name": ref.name, "uid": ref.uid}


def _ref(raw: Any) -> Ref:
    ref = Ref(raw["name"], raw["uid"])
    if not isinstance(ref.name, str) or not isinstance(ref.uid, str):
        raise TypeError("a ref's name and uid are strings")
    return ref


def username(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


# --- signing ---------------------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    if not _B64URL.match(text):
        raise TokenInvalid("invalid bearer token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error) as exc:
        raise TokenInvalid("invalid bearer token") from exc


class Signer:
    """Signs and verifies compact JWS tokens with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        # As Kubernetes derives a key id from its public key: non-reversibly.
        self.key_id = _b64encode(hashlib.sha256(b"navigator-kubeapi-kid:" + key).digest())

    def sign(self, claims: Claims) -> str:
        header = {"alg": ALGORITHM, "kid": self.key_id}
        signing_input = ".".join(
            _b64encode(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims.payload())
        )
        return f"{signing_input}.{self._signature(signing_input)}"

    def _signature(self, signing_input: str) -> str:
        return _b64encode(hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest())

    def verify(self, token: str) -> Claims:
        """The claims of a token this key signed. Checks the form and the signature only."""
        parts = token.split(".")
        if len(parts) != 3 or token.lstrip().startswith("{"):
            raise TokenInvalid("invalid bearer token")
        try:
            header = json.loads(_b64decode(parts[0]))
        except (ValueError, RecursionError) as exc:
            raise TokenInvalid("invalid bearer token") from exc
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            raise TokenInvalid("invalid bearer token")
        if header.get("kid", self.key_id) != self.key_id:
            raise TokenInvalid("invalid signature, no keys found")
        # NOTE: the signature is compared as text with its one canonical encoding, so no
        # changed character (not even in base64's unused trailing bits) goes unnoticed.
        if not hmac.compare_digest(self._signature(f"{parts[0]}.{parts[1]}"), parts[2]):
            raise TokenInvalid("invalid signature")
        try:
            payload = json.loads(_b64decode(parts[1]))
        except (ValueError, RecursionError) as exc:
            raise TokenInvalid("invalid bearer token") from exc
        return Claims.from_payload(payload)


# --- reviewing -------------------------------------------------------------------------------


def _go_quote(values: Sequence[str]) -> str:
    """A string slice as Go's ``%q`` prints it: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def check_audiences(
    claims: Claims, requested: Sequence[str], implicit: Sequence[str]
) -> tuple[str, ...]:
    """The audiences both the token and the review accept, as ``jwt.go`` computes them: a
    review that names none is taken to ask for the server's own (``implicit``) audiences."""
    token_auds = claims.audiences or tuple(implicit)
    wanted = tuple(requested) or tuple(implicit)
    matched = tuple(a for a in token_auds if a in wanted)
    if not matched:
        raise TokenInvalid(
            f"token audiences {_go_quote(token_auds)} is invalid for the "
            f"target audiences {_go_quote(wanted)}"
        )
    return matched


def check_time(claims: Claims, now: float) -> None:
    if now - LEEWAY > claims.expires_at:
        raise TokenInvalid("service account token has expired")
    if now + LEEWAY < claims.not_before:
        raise TokenInvalid("service account token is not valid yet")
    if now + LEEWAY < claims.issued_at:
        raise TokenInvalid("service account token is issued in the future")


@dataclass(frozen=True)
class UserInfo:
    """Who a token authenticates: TokenReview's ``status.user``."""

    username: str
    uid: str
    groups: tuple[str, ...]
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "username": self.username,
            "uid": self.uid,
            "groups": list(self.groups),
        }
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def validate(claims: Claims, *, lookup: Lookup, now: float) -> UserInfo:
    """What ``claims.go`` checks once signature, issuer and audiences are good: the time, and
    that the ServiceAccount and the bound secret or pod are still the objects the token was
    issued for. Raises ``TokenInvalid`` with Kubernetes' words."""
    check_time(claims, now)
    ns, sa = claims.namespace, claims.service_account
    account = lookup("serviceaccounts", ns, sa.name)
    if account is None:
        raise TokenInvalid(f'serviceaccount "{sa.name}" not found')
    if _uid(account) != sa.uid:
        raise TokenInvalid(f"service account UID ({_uid(account)}) does not match claim ({sa.uid})")
    if claims.secret is not None:
        secret = lookup("secrets", ns, claims.secret.name)
        if secret is None:
            raise TokenInvalid("service account token has been invalidated")
        if _uid(secret) != claims.secret.uid:
            raise TokenInvalid(
                f"secret UID ({_uid(secret)}) does not match service account "
                f"secret ref claim ({claims.secret.uid})"
            )
    extra: dict[str, tuple[str, ...]] = {}
    if claims.pod is not None:
        pod = lookup("pods", ns, claims.pod.name)
        if pod is None:
            raise TokenInvalid("service account token has been invalidated")
        if _uid(pod) != claims.pod.uid:
            raise TokenInvalid(
                f"pod UID ({_uid(pod)}) does not match service account pod "
                f"ref claim ({claims.pod.uid})"
            )
        extra[POD_NAME_KEY] = (claims.pod.name,)
        extra[POD_UID_KEY] = (claims.pod.uid,)
        if claims.node is not None:
            extra[NODE_NAME_KEY] = (claims.node.name,)
            extra[NODE_UID_KEY] = (claims.node.uid,)
    if claims.jti:
        extra[CREDENTIAL_ID_KEY] = (f"JTI={claims.jti}",)
    return UserInfo(
        username=claims.subject,
        uid=sa.uid,
        groups=("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"),
        extra=extra,
    )


# --- one server's authority ------------------------------------------------------------------


class Authority:
    """Issues and reviews the tokens of one API server: its key, issuer, audiences, clock."""

    def __init__(
        self,
        *,
        key: bytes,
        issuer: str = DEFAULT_ISSUER,
        audiences: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = Signer(key)
        self.issuer = issuer
        # The audiences of the API server itself (kube-apiserver's --api-audiences), which
        # default to the issuer.
        self.audiences: tuple[str, ...] = tuple(audiences) or (issuer,)
        self.clock = clock

    def issue(
        self,
        *,
        namespace: str,
        service_account: Ref,
        audiences: Sequence[str],
        expires_in: int,
        pod: Ref | None = None,
        secret: Ref | None = None,
        node: Ref | None = None,
        now: float | None = None,
    ) -> tuple[str, Claims]:
        """A signed token and its claims. No bounds on ``expires_in``: the HTTP layer applies
        Kubernetes' limits, tests may mint tokens that are already expired."""
        issued = int(self.clock() if now is None else now)
        claims = Claims(
            issuer=self.issuer,
            audiences=tuple(audiences),
            issued_at=issued,
            not_before=issued,
            expires_at=issued + expires_in,
            namespace=namespace,
            service_account=service_account,
            jti=str(uuid.uuid4()),
            pod=pod,
            secret=secret,
            node=node,
        )
        return self.signer.sign(claims), claims

    def review(
        self, token: str, *, audiences: Sequence[str], lookup: Lookup
    ) -> tuple[UserInfo, tuple[str, ...]]:
        """Who the token authenticates and for which of ``audiences`` (the server's own when
        empty), in the order Kubernetes checks: form, signature, issuer, audiences, then
        ``validate``. Raises ``TokenInvalid``."""
        claims = self.signer.verify(token)
        if claims.issuer != self.issuer:
            raise TokenInvalid(f"token issuer {json.dumps(claims.issuer)} is invalid")
        matched = check_audiences(claims, audiences, self.audiences)
        return validate(claims, lookup=lookup, now=self.clock()), matched
