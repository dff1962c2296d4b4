"""Service-account tokens: TokenRequest and TokenReview through the official client, kubectl
and raw HTTP, judged as Kubernetes judges them. The server runs on a controllable clock."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import pytest
from kubernetes.client import ApiClient, AuthenticationV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from navigator.kubeapi import errors, server, tokens
from navigator.kubeapi.server import KubeApiServer

Kubectl = Callable[..., Awaitable[tuple[int, str, str]]]  # the ``kubectl`` fixture
ISSUER = tokens.DEFAULT_ISSUER
GROUPS = ["system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"]


class Clock:
    """The server's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def kube(clock: Clock, tmp_path: Path) -> AsyncIterator[KubeApiServer]:
    """Overrides the conftest server (so ``api`` and ``kubectl`` talk to this one)."""
    srv = KubeApiServer(port=0, name="test", clock=clock, token_key_file=tmp_path / "sa.key")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


def service_account(name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}


def pod(name: str, sa: str = "web", node: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "app"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": spec,
    }


def token_request(**spec: Any) -> kubernetes.client.AuthenticationV1TokenRequest:
    return kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(**spec)
    )


async def request_token(api: ApiClient, name: str = "web", **spec: Any) -> Any:
    return await call(
        CoreV1Api(api).create_namespaced_service_account_token, name, "apps", token_request(**spec)
    )


async def review(api: ApiClient, token: str, audiences: list[str] | None = None) -> Any:
    body = kubernetes.client.V1TokenReview(
        spec=kubernetes.client.V1TokenReviewSpec(token=token, audiences=audiences)
    )
    result = await call(AuthenticationV1Api(api).create_token_review, body)
    return result.status


async def test_token_for_audience_a_authenticates_for_a_only(
    api: ApiClient, kube: KubeApiServer
) -> None:
    sa = await call(CoreV1Api(api).create_namespaced_service_account, "apps", service_account())
    issued = await request_token(api, audiences=["A"], expiration_seconds=600)
    token = issued.status.token
    assert issued.spec.audiences == ["A"] and issued.spec.expiration_seconds == 600
    assert issued.metadata.name == "web" and issued.metadata.namespace == "apps"
    claims = claims_of(token)
    assert claims == {
        "aud": ["A"],
        "iss": ISSUER,
        "sub": "system:serviceaccount:apps:web",
        "iat": claims["iat"],
        "nbf": claims["iat"],
        "exp": claims["iat"] + 600,
        "jti": claims["jti"],
        "kubernetes.io": {
            "namespace": "apps",
            "serviceaccount": {"name": "web", "uid": sa.metadata.uid},
        },
    }
    assert issued.status.expiration_timestamp.timestamp() == claims["exp"]

    ok = await review(api, token, ["A", "C"])
    assert ok.authenticated is True and ok.error is None
    assert ok.audiences == ["A"]
    assert (ok.user.username, ok.user.uid, ok.user.groups) == (
        "system:serviceaccount:apps:web",
        sa.metadata.uid,
        GROUPS,
    )
    assert ok.user.extra == {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}

    wrong = await review(api, token, ["B"])
    assert wrong.authenticated is False and wrong.user.username is None
    assert wrong.error == 'token audiences ["A"] is invalid for the target audiences ["B"]'
    # Without audiences a review asks for the server's own, which this token is not for.
    implicit = await review(api, token)
    assert implicit.authenticated is False
    assert (
        implicit.error == f'token audiences ["A"] is invalid for the target audiences ["{ISSUER}"]'
    )


async def test_defaults_are_the_server_audience_and_an_hour(api: ApiClient) -> None:
    await call(CoreV1Api(api).create_namespaced_service_account, "apps", service_account())
    issued = await call(
        CoreV1Api(api).create_namespaced_service_account_token,
        "web",
        "apps",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"},
    )
    assert issued.spec.audiences == [ISSUER] and issued.spec.expiration_seconds == 3600
    claims = claims_of(issued.status.token)
    assert claims["exp"] - claims["iat"] == 3600 and claims["aud"] == [ISSUER]
    status = await review(api, issued.status.token)
    assert status.authenticated is True and status.audiences == [ISSUER]


async def test_expiry_follows_the_clock_with_kubernetes_leeway(
    api: ApiClient, kube: KubeApiServer, clock: Clock
) -> None:
    await call(CoreV1Api(api).create_namespaced_service_account, "apps", service_account())
    token = (await request_token(api, audiences=["A"], expiration_seconds=600)).status.token
    clock.now += 600 + tokens.LEEWAY
    assert (await review(api, token, ["A"])).authenticated is True
    clock.now += 1
    expired = await review(api, token, ["A"])
    assert (expired.authenticated, expired.error) == (False, "service account token has expired")


async def test_issue_token_mints_expired_and_valid_tokens(
    api: ApiClient, kube: KubeApiServer, clock: Clock
) -> None:
    sa = kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    valid = kube.issue_token("apps", "web", audiences=["A"])
    assert claims_of(valid)["exp"] == clock.now + 3600
    status = await review(api, valid, ["A"])
    assert status.authenticated is True and status.user.uid == sa["metadata"]["uid"]
    for expired in (
        kube.issue_token("apps", "web", audiences=["A"], expires_in=-3600),
        kube.issue_token("apps", "web", audiences=["A"], expires_in=600, now=clock.now - 7200),
    ):
        assert kube.review_token(expired, audiences=["A"]) == {
            "authenticated": False,
            "user": {},
            "error": "service account token has expired",
        }
    future = kube.issue_token("apps", "web", audiences=["A"], now=clock.now + 3600)
    assert kube.review_token(future, audiences=["A"])["error"] == (
        "service account token is not valid yet"
    )
    with pytest.raises(errors.ApiError) as e:
        kube.issue_token("apps", "nobody")
    assert (e.value.code, e.value.message) == (404, 'serviceaccounts "nobody" not found')


def _flip(text: str, index: int) -> str:
    char = text[index]
    return text[:index] + ("B" if char == "A" else "A") + text[index + 1 :]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda t: 5, id="header"),
        pytest.param(lambda t: t.index(".") + 10, id="payload"),
        pytest.param(lambda t: t.rindex(".") + 3, id="signature"),
        pytest.param(lambda t: len(t) - 1, id="signature-last-char"),
    ],
)
async def test_a_token_with_one_byte_changed_is_rejected(
    api: ApiClient, kube: KubeApiServer, where: Callable[[str], int]
) -> None:
    kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    token = kube.issue_token("apps", "web", audiences=["A"])
    assert (await review(api, token, ["A"])).authenticated is True
    status = await review(api, _flip(token, where(token)), ["A"])
    assert status.authenticated is False and status.error


@pytest.mark.parametrize(
    ("token", "error"),
    [
        pytest.param("not-a-jwt", "invalid bearer token", id="not-a-jwt"),
        pytest.param("a.b.c", "invalid bearer token", id="not-base64-json"),
        pytest.param('{"alg":"none"}', "invalid bearer token", id="json"),
    ],
)
def test_malformed_tokens_are_verdicts(kube: KubeApiServer, token: str, error: str) -> None:
    assert kube.review_token(token) == {"authenticated": False, "user": {}, "error": error}


def test_another_key_or_issuer_is_rejected(kube: KubeApiServer, clock: Clock) -> None:
    kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    other = KubeApiServer(clock=clock)
    other.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    foreign = other.issue_token("apps", "web")
    assert kube.review_token(foreign)["error"] == "invalid signature, no keys found"
    assert other.review_token(foreign)["authenticated"] is True
    # Same key, another issuer: signature good, issuer not.
    same_key = tokens.Authority(
        key=kube.tokens.signer._key, issuer="https://elsewhere", clock=clock
    )
    token, _ = same_key.issue(
        namespace="apps", service_account=tokens.Ref("web", "u"), audiences=[ISSUER], expires_in=600
    )
    assert kube.review_token(token)["error"] == 'token issuer "https://elsewhere" is invalid'


async def test_deleted_or_recreated_service_account_invalidates_its_tokens(api: ApiClient) -> None:
    core = CoreV1Api(api)
    first = await call(core.create_namespaced_service_account, "apps", service_account())
    token = (await request_token(api, audiences=["A"])).status.token
    assert (await review(api, token, ["A"])).authenticated is True
    deleted = await call(core.delete_namespaced_service_account, "web", "apps")
    assert deleted.metadata.uid == first.metadata.uid
    gone = await review(api, token, ["A"])
    assert (gone.authenticated, gone.error) == (False, 'serviceaccount "web" not found')

    second = await call(core.create_namespaced_service_account, "apps", service_account())
    assert second.metadata.uid != first.metadata.uid
    stale = await review(api, token, ["A"])
    assert (stale.authenticated, stale.error) == (
        False,
        (
            f"service account UID ({second.metadata.uid}) does not match claim "
            f"({first.metadata.uid})"
        ),
    )
    fresh = (await request_token(api, audiences=["A"])).status.token
    assert (await review(api, fresh, ["A"])).user.uid == second.metadata.uid


async def test_pod_bound_token_dies_with_its_pod(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    await call(core.create_namespaced_service_account, "apps", service_account())
    node = kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    first = kube.store.create(pod("web-1", node="n1"))
    issued = await request_token(
        api,
        audiences=["A"],
        bound_object_ref=(
            kubernetes.client.V1BoundObjectReference(kind="Pod", api_version="v1", name="web-1")
        ),
    )
    token = issued.status.token
    k8s = claims_of(token)["kubernetes.io"]
    assert k8s["pod"] == {"name": "web-1", "uid": first["metadata"]["uid"]}
    assert k8s["node"] == {"name": "n1", "uid": node["metadata"]["uid"]}
    status = await review(api, token, ["A"])
    assert status.authenticated is True
    extra = status.user.extra
    assert extra["authentication.kubernetes.io/pod-name"] == ["web-1"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [first["metadata"]["uid"]]
    assert extra["authentication.kubernetes.io/node-name"] == ["n1"]
    assert extra["authentication.kubernetes.io/node-uid"] == [node["metadata"]["uid"]]

    await call(core.delete_namespaced_pod, "web-1", "apps")
    gone = await review(api, token, ["A"])
    assert (gone.authenticated, gone.error) == (False, "service account token has been invalidated")
    again = kube.store.create(pod("web-1"))
    stale = await review(api, token, ["A"])
    assert stale.error == (
        f"pod UID ({again['metadata']['uid']}) does not match service "
        f"account pod ref claim ({first['metadata']['uid']})"
    )


async def test_secret_bound_token_dies_with_its_secret(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    await call(core.create_namespaced_service_account, "apps", service_account())
    secret = await call(
        core.create_namespaced_secret, "apps", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    assert secret.data == {"k": "dg=="} and secret.type == "Opaque"
    token = kube.issue_token("apps", "web", secret="s")
    assert claims_of(token)["kubernetes.io"]["secret"] == {"name": "s", "uid": secret.metadata.uid}
    assert (await review(api, token)).authenticated is True
    await call(core.delete_namespaced_secret, "s", "apps")
    assert (await review(api, token)).error == "service account token has been invalidated"


def _ref(kind: str, name: str, uid: str = "") -> dict[str, str]:
    return {"kind": kind, "apiVersion": "v1", "name": name, "uid": uid}


TOO_SHORT = (
    'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: '
    "Invalid value: {}: may not specify a duration less than 10 minutes"
)
UID_MISMATCH = (
    'Operation cannot be fulfilled on Pod "mine": the UID in the bound object reference '
    "(not-its-uid) does not match the UID in record. The object might have been deleted and "
    "then recreated"
)


@pytest.mark.parametrize(
    ("sa", "spec", "want"),
    [
        pytest.param(
            "nope",
            {},
            (404, "NotFound", 'serviceaccounts "nope" not found'),
            id="no-service-account",
        ),
        pytest.param(
            "web",
            {"expirationSeconds": 599},
            (422, "Invalid", TOO_SHORT.format(599)),
            id="shorter-than-10-minutes",
        ),
        pytest.param(
            "web",
            {"expirationSeconds": 0},
            (422, "Invalid", TOO_SHORT.format(0)),
            id="zero-seconds",
        ),
        pytest.param(
            "web",
            {"boundObjectRef": _ref("Pod", "ghost")},
            (404, "NotFound", 'pods "ghost" not found'),
            id="no-such-pod",
        ),
        pytest.param(
            "web",
            {"boundObjectRef": _ref("Secret", "ghost")},
            (404, "NotFound", 'secrets "ghost" not found'),
            id="no-such-secret",
        ),
        pytest.param(
            "web",
            {"boundObjectRef": _ref("Pod", "other")},
            (
                400,
                "BadRequest",
                'cannot bind token for serviceaccount "web" to pod running with different '
                "serviceaccount name.",
            ),
            id="pod-of-another-account",
        ),
        pytest.param(
            "web",
            {"boundObjectRef": _ref("Pod", "mine", "not-its-uid")},
            (409, "Conflict", UID_MISMATCH),
            id="pod-uid-mismatch",
        ),
        pytest.param(
            "web",
            {"boundObjectRef": _ref("Node", "n1")},
            (400, "BadRequest", "cannot bind token to object of type /v1, Kind=Node"),
            id="unsupported-kind",
        ),
    ],
)
async def test_token_request_errors(
    api: ApiClient,
    kube: KubeApiServer,
    sa: str,
    spec: dict[str, Any],
    want: tuple[int, str, str],
) -> None:
    kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    kube.store.create(pod("other", sa="other"))
    kube.store.create(pod("mine"))
    with pytest.raises(ApiException) as e:
        await call(
            CoreV1Api(api).create_namespaced_service_account_token,
            sa,
            "apps",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            field_validation="Strict",
        )
    body = json.loads(e.value.body or "{}")
    assert (e.value.status, body["reason"], body["message"]) == want


async def test_http_shape_and_discovery(kube: KubeApiServer) -> None:
    async with aiohttp.ClientSession(base_url=kube.url) as http:
        async with http.get("/apis") as r:
            groups = {g["name"]: g for g in (await r.json())["groups"]}
        assert groups["authentication.k8s.io"]["preferredVersion"] == {
            "groupVersion": "authentication.k8s.io/v1",
            "version": "v1",
        }
        async with http.get("/apis/authentication.k8s.io/v1") as r:
            assert (await r.json())["resources"] == [
                {
                    "name": "tokenreviews",
                    "singularName": "tokenreview",
                    "namespaced": False,
                    "kind": "TokenReview",
                    "verbs": ["create"],
                }
            ]
        async with http.get("/api/v1") as r:
            core = {res["name"]: res for res in (await r.json())["resources"]}
        assert core["serviceaccounts"]["shortNames"] == ["sa"]
        assert core["serviceaccounts/token"] == {
            "name": "serviceaccounts/token",
            "singularName": "",
            "namespaced": True,
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        }
        reviews = "/apis/authentication.k8s.io/v1/tokenreviews"
        async with http.get(reviews) as r:
            assert r.status == 405
        async with http.post(reviews, json={"spec": {}}) as r:
            assert (r.status, (await r.json())["message"]) == (
                400,
                "token is required for TokenReview in authentication",
            )
        async with http.post(reviews, json={"spec": {"token": "x"}}) as r:
            body = await r.json()
        # A bad token is a verdict in a 201, never an HTTP error.
        assert r.status == 201 and body["kind"] == "TokenReview"
        assert body["status"] == {
            "authenticated": False,
            "user": {},
            "error": "invalid bearer token",
        }
        token_url = "/api/v1/namespaces/apps/serviceaccounts/web/token"
        async with http.get(token_url) as r:
            assert r.status == 405
        kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
        async with http.post(
            token_url + "?fieldValidation=Strict", json={"spec": {"audience": ["A"]}}
        ) as r:
            assert (r.status, (await r.json())["message"]) == (
                400,
                'strict decoding error: unknown field "spec.audience"',
            )
        async with http.post(token_url, json={"spec": {"audience": ["A"]}}) as r:
            assert r.status == 201
            assert r.headers.getall("Warning") == ['299 - "unknown field \\"spec.audience\\""']


async def test_service_accounts_are_listed_watched_and_loaded(
    api: ApiClient, kube: KubeApiServer, tmp_path: Path
) -> None:
    manifest = tmp_path / "sa.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ServiceAccount\n"
        "metadata: {name: loaded, namespace: apps}\n"
        "automountServiceAccountToken: false\n"
    )
    assert server.load_manifests(kube.store, manifest) == 1
    core = CoreV1Api(api)
    listed = await call(core.list_namespaced_service_account, "apps")
    assert [(s.metadata.name, s.automount_service_account_token) for s in listed.items] == [
        ("loaded", False)
    ]

    def first_event() -> Any:
        stream = kubernetes.watch.Watch().stream(
            core.list_namespaced_service_account, "apps", timeout_seconds=5
        )
        try:
            return next(iter(stream))
        finally:
            stream.close()

    event = await call(first_event)
    assert (event["type"], event["object"].metadata.name) == ("ADDED", "loaded")
    assert kube.review_token(kube.issue_token("apps", "loaded"))["authenticated"] is True


async def test_key_file_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys" / "sa.key"
    path.parent.mkdir()
    first = KubeApiServer(clock=clock, token_key_file=path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    token = first.issue_token("apps", "web")

    again = KubeApiServer(clock=clock, token_key_file=path)
    fresh = KubeApiServer(clock=clock)
    for srv in (again, fresh):
        srv.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    assert fresh.review_token(token)["error"] == "invalid signature, no keys found"
    # The restarted server knows the signature; its store's ServiceAccount is a new object,
    # which Kubernetes would reject just the same.
    assert again.review_token(token)["error"].startswith("service account UID (")
    assert again.review_token(again.issue_token("apps", "web"))["authenticated"] is True

    path.write_text("short\n")
    with pytest.raises(tokens.KeyFileError):
        KubeApiServer(token_key_file=path)


def test_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = server._parser().parse_args(
        [
            "--token-key-file",
            "/k",
            "--api-audiences",
            "a,b",
            "--service-account-issuer",
            "https://i",
        ]
    )
    assert (args.token_key_file, args.api_audiences, args.service_account_issuer) == (
        "/k",
        "a,b",
        "https://i",
    )


async def test_kubectl_create_token_and_review(
    kubectl: Kubectl, kube: KubeApiServer, tmp_path: Path
) -> None:
    rc, out, err = await kubectl("create", "serviceaccount", "web", "-n", "apps")
    assert (rc, out) == (0, "serviceaccount/web created\n"), err
    uid = kube.store.get("v1", "ServiceAccount", "web", "apps")["metadata"]["uid"]
    rc, out, err = await kubectl(
        "create", "token", "web", "-n", "apps", "--audience", "A", "--duration", "20m"
    )
    assert rc == 0, err
    token = out.strip()
    claims = claims_of(token)
    assert claims["aud"] == ["A"] and claims["exp"] - claims["iat"] == 1200

    body = tmp_path / "review.json"
    verdicts = {}
    for audience in ("A", "B"):
        body.write_text(
            json.dumps(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token, "audiences": [audience]},
                }
            )
        )
        rc, out, err = await kubectl(
            "create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", str(body)
        )
        assert rc == 0, err
        verdicts[audience] = json.loads(out)["status"]
    assert verdicts["A"]["authenticated"] is True
    assert verdicts["A"]["user"]["username"] == "system:serviceaccount:apps:web"
    assert verdicts["A"]["user"]["uid"] == uid and verdicts["A"]["user"]["groups"] == GROUPS
    assert verdicts["B"]["authenticated"] is False
    assert verdicts["B"]["error"] == (
        'token audiences ["A"] is invalid for the target audiences ["B"]'
    )


async def test_kubectl_create_token_errors_and_pod_binding(
    kubectl: Kubectl, kube: KubeApiServer
) -> None:
    kube.store.create({**service_account(), "metadata": {"name": "web", "namespace": "apps"}})
    cases = {
        ("nope",): 'error: failed to create token: serviceaccounts "nope" not found',
        (
            "web",
            "--duration",
            "5m",
        ): 'error: failed to create token: TokenRequest.authentication.k8s.io "" is invalid: '
        "spec.expirationSeconds: Invalid value: 300: may not specify a duration less than "
        "10 minutes",
        (
            "web",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "ghost",
        ): 'error: failed to create token: pods "ghost" not found',
    }
    for args, want in cases.items():
        rc, _, err = await kubectl("create", "token", *args, "-n", "apps")
        assert (rc, err.strip()) == (1, want)

    bound = kube.store.create(pod("web-1"))
    rc, out, err = await kubectl(
        "create",
        "token",
        "web",
        "-n",
        "apps",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "web-1",
    )
    assert rc == 0, err
    token = out.strip()
    status = kube.review_token(token)
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [
        bound["metadata"]["uid"]
    ]
    rc, _, err = await kubectl("delete", "pod", "web-1", "-n", "apps")
    assert rc == 0, err
    assert kube.review_token(token) == {
        "authenticated": False,
        "user": {},
        "error": "service account token has been invalidated",
    }


# What ``kubectl create token web -n apps --audience A --audience B --duration 10m
# --bound-object-kind Pod --bound-object-name p --bound-object-uid u-1`` sends (kubectl 1.32).
KUBECTL_TOKEN_REQUEST = (
    b"k8s\x00\n(\n\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x126\n\x10\n\x00\x12\x00"
    b'\x1a\x00"\x00*\x002\x008\x00B\x00\x12\x1c\n\x01A\n\x01B\x1a\x11\n\x03Pod\x12\x02v1\x1a'
    b'\x01p"\x03u-1 \xd8\x04\x1a\x04\n\x00\x12\x00\x1a\x00"\x00'
)


def test_protobuf_token_request_decodes_as_kubectl_means_it() -> None:
    assert server._decode_protobuf(KUBECTL_TOKEN_REQUEST) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {},
        "spec": {
            "audiences": ["A", "B"],
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-1"},
            "expirationSeconds": 600,
        },
    }


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"{}", 400, id="no-magic"),
        pytest.param(KUBECTL_TOKEN_REQUEST[:40], 400, id="truncated"),
        pytest.param(b"k8s\x00\n\n\n\x02v1\x12\x04Node", 415, id="kind-without-proto"),
    ],
)
def test_protobuf_errors(raw: bytes, code: int) -> None:
    with pytest.raises(errors.ApiError) as e:
        server._decode_protobuf(raw)
    assert e.value.code == code
