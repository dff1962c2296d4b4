"""A local Kubernetes API server that speaks the real wire protocol (aiohttp on asyncio).

No real API server can run in the lab, yet the mesh's watchers, the official ``kubernetes``
client and ``kubectl`` must behave against it exactly as against a cluster: discovery,
OpenAPI v3 (so kubectl validates server-side), CRUD with Status errors, merge/JSON patches,
lists with limit/continue and selectors, and watches with history replay, bookmarks and
410 Expired. Test hooks let tests and chaos scenarios break it on purpose.

Service-account tokens, because the front-end authenticates sidecars by their pod's projected
token: ServiceAccounts (and Secrets) are stored kinds; ``POST .../serviceaccounts/{name}/token``
(TokenRequest) mints a signed JWT with the claims of a projected token, bound to a pod or a
secret if asked; ``POST /apis/authentication.k8s.io/v1/tokenreviews`` (TokenReview) checks one
as Kubernetes does: signature, issuer, audiences, expiry, and that the ServiceAccount and the
bound object still exist with the uid the token names. ``issue_token`` mints tokens from Python
(expired ones too), ``review_token`` reviews them; ``token_key_file`` keeps the signing key
across restarts (``tokens`` says how tokens are signed, and why HS256 is enough here). As with
a real server after admission, a pod with no ``spec.serviceAccountName`` runs as ``default``.

Request bodies are JSON or YAML, and protobuf for the kinds that kubectl's typed commands
(``create token``, ``create serviceaccount``) send so: ServiceAccount, TokenRequest,
TokenReview. Answers are JSON. Known gap: ``kubectl create -f`` of a TokenReview validates it
client-side against OpenAPI v2, which is not served; use ``--validate=false`` or
``kubectl create --raw /apis/authentication.k8s.io/v1/tokenreviews -f FILE``.

Hooks (methods, and ``POST`` endpoints under ``/_navigator/``):

* ``compact()`` / ``/_navigator/compact``: forget the history; older resourceVersions get 410.
* ``drop_watches()`` / ``/_navigator/drop-watches``: end every open watch stream now. The
  response ends cleanly, as when a real server resets its watch cache, so clients resume
  from their last resourceVersion.
* ``set_unreachable(flag)`` / ``/_navigator/unreachable?value=true|false``: while unreachable
  the API port is closed and every open connection is aborted (clients see connection refused
  or reset); becoming reachable again listens on the same port.

Choice: "unreachable" affects only the API port. The hooks are served on the API port and,
when ``control_port`` is given, on a separate control port (with ``/healthz``, ``/readyz`` and
``/metrics``) that stays up while the API port is down; only that port can make the server
reachable again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import prometheus_client
import yaml
from aiohttp import web

from navigator import runtime
from navigator.kubeapi import errors, openapi, patch, resources, selectors, tokens
from navigator.kubeapi.resources import ResourceType
from navigator.kubeapi.store import FieldValidation, Obj, Store, Watcher

log = logging.getLogger("navigator.kubeapi")

_TRUE = ("1", "true", "True")
_JSON = "application/json"
_PROTOBUF = "application/vnd.kubernetes.protobuf"
_DEFAULT_TOKEN_SECONDS = 3600
_MIN_TOKEN_SECONDS = 600
_MAX_TOKEN_SECONDS = 1 << 32
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Per-request labels for the metrics, set by the handlers.
_VERB = web.RequestKey("verb", str)
_RESOURCE = web.RequestKey("resource", str)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, status: int = 200, warnings: Sequence[str] = ()) -> web.Response:
    resp = web.Response(body=_dump(obj), status=status, content_type=_JSON)
    for w in warnings:
        resp.headers.add("Warning", f'299 - "{w.replace(chr(34), chr(92) + chr(34))}"')
    return resp


def _int_param(q: Mapping[str, str], name: str) -> int | None:
    raw = q.get(name, "")
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(f"invalid value for {name}: {raw!r}") from None


class _Target:
    """What a resource URL designates: a collection, an object, or an object's status."""

    def __init__(self, rt: ResourceType, namespace: str | None, name: str | None,
                 sub: str) -> None:
        self.rt, self.namespace, self.name, self.sub = rt, namespace, name, sub


def _not_found() -> errors.ApiError:
    return errors.ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})


def _parse_path(group: str, segs: list[str]) -> _Target:
    namespace: str | None = None
    if len(segs) >= 3 and segs[0] == "namespaces" and not (group == "" and len(segs) == 3
                                                         and segs[2] == "status"):
        namespace, segs = segs[1], segs[2:]
    if not segs or len(segs) > 3:
        raise _not_found()
    rt = Store.resource(group, segs[0])
    name = segs[1] if len(segs) > 1 else None
    sub = segs[2] if len(segs) > 2 else ""
    known_sub = (sub == "status" and rt.status_subresource) or any(
        s.name == sub for s in rt.subresources)
    if (sub and not known_sub) or (
            namespace is not None and not rt.namespaced) or (
            name is not None and rt.namespaced and namespace is None):
        raise _not_found()
    return _Target(rt, namespace, name, sub)


class KubeApiServer:
    """One emulated cluster's API server. Start it on a running event loop."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "kube",
        bookmark_interval: float = 5.0,
        control_port: int | None = None,
        service_cidr: str = "10.96.0.0/16",
        history_limit: int = 100_000,
        watch_queue_limit: int = 1_000,
        token_key_file: str | os.PathLike[str] | None = None,
        token_issuer: str = tokens.DEFAULT_ISSUER,
        api_audiences: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``token_key_file`` holds the key tokens are signed with (created, mode 0600, if
        missing; a random key per server without it). ``api_audiences`` are the server's own
        audiences (default: the issuer). ``clock`` is the wall clock of token issue and
        expiry, for tests to move."""
        self.host = host
        self.port = port
        self.name = name
        self.bookmark_interval = bookmark_interval
        self.control_port = control_port
        self.store = Store(history_limit=history_limit, watch_queue_limit=watch_queue_limit,
                           service_cidr=service_cidr)
        key = tokens.load_or_create_key(token_key_file) if token_key_file is not None \
            else tokens.generate_key()
        self.tokens = tokens.Authority(key=key, issuer=token_issuer, audiences=api_audiences,
                                       clock=clock)
        self.unreachable = False
        self.registry = prometheus_client.CollectorRegistry()
        self._requests = prometheus_client.Counter(
            "kubeapi_requests", "API requests served", ["verb", "resource", "code"],
            registry=self.registry)
        prometheus_client.Gauge(
            "kubeapi_open_watches", "Open watch streams", registry=self.registry
        ).set_function(self.store.open_watches)
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._control: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # NOTE: request lines and headers up to 1 MiB, as Kubernetes (Go's DefaultMaxHeaderBytes);
        # aiohttp's 8 KiB would refuse a long selector before our handler (no Status, an
        # ERROR log).
        self._runner = web.AppRunner(self._api_app(), handler_cancellation=True,
                                     access_log=None, shutdown_timeout=1.0,
                                     max_line_size=1 << 20, max_field_size=1 << 20)
        await self._runner.setup()
        await self._listen()
        if self.control_port is not None:
            self._control = web.AppRunner(self._control_app(), access_log=None,
                                          shutdown_timeout=1.0)
            await self._control.setup()
            sock = self._bind(self.control_port)
            self.control_port = sock.getsockname()[1]
            await web.SockSite(self._control, sock).start()
        log.info("kube-api listening", extra={"cluster": self.name, "url": self.url,
                                              "control_port": self.control_port})

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.setblocking(False)
        return sock

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = self._bind(self.port)
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    def _abort_connections(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        for conn in self._runner.server.connections:
            if conn.transport is not None:
                conn.transport.abort()

    async def stop(self) -> None:
        self.drop_watches()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            if self._runner.server is not None:
                self._abort_connections()
            await self._runner.cleanup()
            self._runner = self._site = None
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        log.info("kube-api stopped", extra={"cluster": self.name})

    # --- hooks -------------------------------------------------------------------------------

    def compact(self) -> None:
        self.store.compact()
        log.info("history compacted", extra={"cluster": self.name, "rv": self.store.rv})

    def drop_watches(self) -> int:
        dropped = self.store.drop_watches()
        log.info("watches dropped", extra={"cluster": self.name, "count": dropped})
        return dropped

    async def set_unreachable(self, unreachable: bool) -> None:
        if unreachable == self.unreachable or self._runner is None:
            return
        self.unreachable = unreachable
        if unreachable:
            assert self._site is not None
            await self._site.stop()
            self._site = None
            self.store.drop_watches()
            self._abort_connections()
        else:
            await self._listen()
        log.info("reachability changed", extra={"cluster": self.name,
                                                "unreachable": unreachable})

    # --- applications ------------------------------------------------------------------------

    def _hook_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/_navigator/compact", self._h_compact),
            web.post("/_navigator/drop-watches", self._h_drop),
            web.post("/_navigator/unreachable", self._h_unreachable),
            web.get("/healthz", self._h_ok),
            web.get("/readyz", self._h_ok),
            web.get("/livez", self._h_ok),
            web.get("/metrics", self._h_metrics),
        ]

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 << 20)
        app.add_routes(self._hook_routes())
        app.add_routes([
            web.get("/version", self._h_version),
            web.get("/api", self._h_api),
            web.get("/apis", self._h_apis),
            web.get("/openapi/v3", self._h_openapi_root),
            web.get("/openapi/v3/{doc:.+}", self._h_openapi_doc),
            web.route("*", "/api/v1{tail:.*}", self._h_core),
            web.route("*", "/apis/{group}{tail:.*}", self._h_group),
        ])
        return app

    def _control_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self._hook_routes())
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes a Status; every request is counted and logged."""
        started = time.monotonic()
        request[_VERB], request[_RESOURCE] = request.method.lower(), ""
        try:
            resp = await handler(request)
        except asyncio.CancelledError:
            # The client went away (handler_cancellation): normal for a watch it closed.
            code = "200" if request[_VERB] == "watch" else "499"
            self._requests.labels(request[_VERB], request[_RESOURCE], code).inc()
            raise
        except errors.ApiError as e:
            resp = _json(e.status(), e.code)
        except web.HTTPException as e:
            reason = "NotFound" if e.status == 404 else "MethodNotAllowed" \
                if e.status == 405 else "BadRequest"
            message = "the server could not find the requested resource" \
                if e.status == 404 else e.text or e.reason
            resp = _json(errors.ApiError(e.status, reason, str(message), {}).status(),
                         e.status)
        except Exception:
            log.exception("internal error", extra={"path": request.path})
            resp = _json(errors.ApiError(500, "InternalError", "internal error").status(), 500)
        self._requests.labels(request[_VERB], request[_RESOURCE], str(resp.status)).inc()
        log.debug("request", extra={
            "cluster": self.name, "method": request.method, "path": request.path_qs,
            "code": resp.status, "ms": round((time.monotonic() - started) * 1000, 1)})
        return resp

    # --- hook and misc handlers --------------------------------------------------------------

    async def _h_ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _h_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(self.registry),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def _h_compact(self, request: web.Request) -> web.Response:
        self.compact()
        return _json({"resourceVersion": str(self.store.rv)})

    async def _h_drop(self, request: web.Request) -> web.Response:
        return _json({"dropped": self.drop_watches()})

    async def _h_unreachable(self, request: web.Request) -> web.Response:
        value = request.query.get("value", "true") in _TRUE
        # Run it after this response is on its way: on the API port it aborts this very
        # connection.
        task = asyncio.get_running_loop().create_task(self._later(self.set_unreachable(value)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json({"unreachable": value})

    @staticmethod
    async def _later(coro: Awaitable[None]) -> None:
        await asyncio.sleep(0.05)
        await coro

    async def _h_version(self, request: web.Request) -> web.Response:
        return _json(openapi.VERSION_INFO)

    async def _h_api(self, request: web.Request) -> web.Response:
        return _json(openapi.api_versions(f"{self.host}:{self.port}"))

    async def _h_apis(self, request: web.Request) -> web.Response:
        return _json(openapi.api_group_list())

    async def _h_openapi_root(self, request: web.Request) -> web.Response:
        return _json(openapi.root_document())

    async def _h_openapi_doc(self, request: web.Request) -> web.Response:
        doc = openapi.documents().get(request.match_info["doc"])
        if doc is None:
            raise _not_found()
        return web.Response(body=doc[0], content_type=_JSON)

    # --- resources ---------------------------------------------------------------------------

    async def _h_core(self, request: web.Request) -> web.StreamResponse:
        return await self._resource(request, "", "v1", request.match_info["tail"])

    async def _h_group(self, request: web.Request) -> web.StreamResponse:
        group, tail = request.match_info["group"], request.match_info["tail"]
        version, _, rest = tail.lstrip("/").partition("/")
        if not version:
            if any(g == group for g, _ in _group_versions()):
                return _json(openapi.api_group(group))
            raise _not_found()
        return await self._resource(request, group, version, "/" + rest if rest else "")

    async def _resource(self, request: web.Request, group: str, version: str,
                        tail: str) -> web.StreamResponse:
        if (group, version) not in _group_versions():
            raise _not_found()
        segs = [s for s in tail.split("/") if s]
        if not segs:
            if request.method != "GET":
                raise web.HTTPMethodNotAllowed(request.method, ["GET"])
            return _json(openapi.api_resource_list(group, version))
        virtual = resources.virtual_kind(group, segs[0]) if len(segs) == 1 else None
        if virtual is not None:
            request[_RESOURCE] = virtual.plural
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            request[_VERB] = "create"
            return await self._token_review(request)
        target = _parse_path(group, segs)
        request[_RESOURCE] = target.rt.plural
        if target.sub and target.sub != "status":
            request[_RESOURCE] = f"{target.rt.plural}/{target.sub}"
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            request[_VERB] = "create"
            return await self._token_request(request, target)
        q = request.query
        if target.name is None:
            if request.method == "GET":
                watch = q.get("watch", "") in _TRUE
                request[_VERB] = "watch" if watch else "list"
                if watch:
                    return await self._watch(request, target)
                return self._list(target, q)
            if request.method == "POST":
                request[_VERB] = "create"
                if target.rt.namespaced and target.namespace is None:
                    raise web.HTTPMethodNotAllowed(request.method, ["GET"])
                obj, warnings = self.store._create(
                    target.rt, target.namespace, await self._body(request),
                    self._validation(q))
                return _json(obj, 201, warnings)
            if request.method == "DELETE":
                request[_VERB] = "deletecollection"
                return self._delete_collection(target, q)
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "DELETE"])
        name = target.name
        if request.method == "GET":
            request[_VERB] = "get"
            return _json(self.store._get(target.rt, target.namespace, name))
        if request.method == "PUT":
            request[_VERB] = "update"
            obj, warnings = self.store._update(
                target.rt, target.namespace, name, await self._body(request),
                self._validation(q), subresource=target.sub)
            return _json(obj, 200, warnings)
        if request.method == "PATCH":
            request[_VERB] = "patch"
            return await self._patch(request, target, name)
        if request.method == "DELETE" and not target.sub:
            request[_VERB] = "delete"
            options = await self._body(request) if request.can_read_body else {}
            deleted = self.store._delete(target.rt, target.namespace, name,
                                         options if isinstance(options, dict) else {})
            if target.rt.return_deleted_object:
                return _json(deleted)
            return _json(_success(target.rt, deleted))
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "PATCH", "DELETE"])

    # --- tokens ------------------------------------------------------------------------------

    def issue_token(self, namespace: str, service_account: str, *,
                    audiences: Sequence[str] | None = None, expires_in: int = 3600,
                    pod: str | None = None, secret: str | None = None,
                    now: float | None = None) -> str:
        """Mint a token for ``namespace/service_account`` directly, as TokenRequest does.

        For tests: unlike the HTTP API, ``expires_in`` has no bounds, so a negative value (or
        ``now`` in the past) gives a token that is already expired. Note the review allows
        ``tokens.LEEWAY`` (60) seconds of skew, as Kubernetes does: to be rejected a token
        must have expired longer ago than that (``expires_in=-3600``, say).

        ``audiences`` default to the server's own (``self.tokens.audiences``). ``pod`` (or
        ``secret``) binds the token to that object of the namespace, which must exist; the pod
        must run as this ServiceAccount (``spec.serviceAccountName``, ``default`` if unset).
        ``now`` is the issue time in Unix seconds (default: the server's clock). Raises
        ``errors.ApiError`` (404) when the ServiceAccount or the bound object does not exist.
        """
        account = self.store._get(self._rt("serviceaccounts"), namespace, service_account)
        bound = None
        if pod is not None or secret is not None:
            bound = {"kind": "Pod" if pod is not None else "Secret", "apiVersion": "v1",
                     "name": pod if pod is not None else secret}
        token, _ = self._issue(account, audiences=audiences or self.tokens.audiences,
                               expires_in=int(expires_in), bound=bound, now=now)
        return token

    def review_token(self, token: str, *, audiences: Sequence[str] = ()) -> dict[str, Any]:
        """The ``status`` a TokenReview of ``token`` for ``audiences`` answers with. A token
        that does not authenticate is ``authenticated: false`` with an ``error``."""
        try:
            user, matched = self.tokens.review(token, audiences=audiences, lookup=self._lookup)
        except tokens.TokenInvalid as e:
            return {"authenticated": False, "user": {}, "error": str(e)}
        return {"authenticated": True, "user": user.to_json(), "audiences": list(matched)}

    @staticmethod
    def _rt(plural: str) -> ResourceType:
        return Store.resource("", plural)

    def _lookup(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store._get(self._rt(plural), namespace or None, name)
        except errors.ApiError:
            return None

    def _issue(self, account: Obj, *, audiences: Sequence[str], expires_in: int,
               bound: Mapping[str, Any] | None,
               now: float | None) -> tuple[str, tokens.Claims]:
        meta = account["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pod = secret = node = None
        if bound:
            kind, api_version = str(bound.get("kind") or ""), str(bound.get("apiVersion") or "")
            ref_name, ref_uid = str(bound.get("name") or ""), str(bound.get("uid") or "")
            group, _, version = api_version.rpartition("/")
            if group == "" and kind == "Pod":
                obj = self.store._get(self._rt("pods"), namespace, ref_name)
                spec = obj.get("spec") or {}
                runs_as = spec.get("serviceAccountName") or spec.get("serviceAccount") \
                    or "default"
                if runs_as != name:
                    raise errors.bad_request(
                        f'cannot bind token for serviceaccount "{name}" to pod running with '
                        "different serviceaccount name.")
                pod = tokens.Ref(ref_name, obj["metadata"]["uid"])
                node_obj = self._lookup("nodes", "", spec["nodeName"]) \
                    if spec.get("nodeName") else None
                if node_obj is not None:  # an unknown node leaves the token without node claims
                    node = tokens.Ref(spec["nodeName"], node_obj["metadata"]["uid"])
                uid = pod.uid
            elif group == "" and kind == "Secret":
                obj = self.store._get(self._rt("secrets"), namespace, ref_name)
                secret = tokens.Ref(ref_name, obj["metadata"]["uid"])
                uid = secret.uid
            else:
                raise errors.bad_request(
                    f"cannot bind token to object of type {group}/{version}, Kind={kind}")
            if ref_uid and ref_uid != uid:
                raise errors.conflict(kind, ref_name, why=(
                    f"the UID in the bound object reference ({ref_uid}) does not match the UID "
                    "in record. The object might have been deleted and then recreated"))
        return self.tokens.issue(
            namespace=namespace, service_account=tokens.Ref(name, meta["uid"]),
            audiences=audiences, expires_in=expires_in, pod=pod, secret=secret, node=node,
            now=now)

    async def _token_request(self, request: web.Request, target: _Target) -> web.Response:
        """``POST .../serviceaccounts/{name}/token``, checked in the order of Kubernetes'
        TokenREST: names, the ServiceAccount (404), defaults, the duration (Invalid), the
        bound object (404, 400, 409)."""
        kind = resources.TOKEN_REQUEST_KIND
        assert target.namespace is not None and target.name is not None
        namespace, name = target.namespace, target.name
        warnings: list[str] = []
        body = self.store._admit(kind, await self._body(request),
                                 self._validation(request.query), warnings)
        meta = body["metadata"]
        for key, want in (("name", name), ("namespace", namespace)):
            if meta.get(key) and meta[key] != want:
                raise errors.invalid(kind.kind, kind.group, name, [(
                    f"metadata.{key}", "FieldValueInvalid",
                    f'Invalid value: "{meta[key]}": must match the service account {key} if '
                    "specified")])
        account = self.store._get(self._rt("serviceaccounts"), namespace, name)
        spec = body.get("spec") or {}
        audiences = list(spec.get("audiences") or self.tokens.audiences)
        seconds = spec.get("expirationSeconds")
        seconds = _DEFAULT_TOKEN_SECONDS if seconds is None else seconds
        for bad, why in ((seconds < _MIN_TOKEN_SECONDS, "less than 10 minutes"),
                         (seconds > _MAX_TOKEN_SECONDS, "larger than 2^32 seconds")):
            if bad:
                raise errors.invalid(kind.kind, kind.group, "", [(
                    "spec.expirationSeconds", "FieldValueInvalid",
                    f"Invalid value: {seconds}: may not specify a duration {why}")])
        now = self.tokens.clock()
        bound = spec.get("boundObjectRef")
        token, claims = self._issue(account, audiences=audiences, expires_in=seconds,
                                    bound=bound, now=now)
        out_spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": seconds}
        if bound:
            out_spec["boundObjectRef"] = bound
        return _json({
            "kind": kind.kind, "apiVersion": kind.api_version,
            "metadata": {**meta, "name": name, "namespace": namespace,
                         "creationTimestamp": _timestamp(claims.issued_at)},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": _timestamp(claims.expires_at)},
        }, 201, warnings)

    async def _token_review(self, request: web.Request) -> web.Response:
        """``POST /apis/authentication.k8s.io/v1/tokenreviews``: 201 with the verdict in
        ``status``; a bad token is a verdict, never an HTTP error."""
        warnings: list[str] = []
        body = self.store._admit(resources.TOKEN_REVIEW_KIND, await self._body(request),
                                 self._validation(request.query), warnings)
        spec = body.get("spec") or {}
        if not spec.get("token"):
            raise errors.bad_request("token is required for TokenReview in authentication")
        body["status"] = self.review_token(spec["token"], audiences=spec.get("audiences") or ())
        body["metadata"].setdefault("creationTimestamp", None)
        return _json(body, 201, warnings)

    @staticmethod
    def _validation(q: Mapping[str, str]) -> FieldValidation:
        if q.get("dryRun"):
            raise errors.bad_request("dryRun is not supported by the local API server")
        mode = q.get("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f"fieldValidation parameter unsupported: {mode}")
        return cast(FieldValidation, mode)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        if request.content_type == _PROTOBUF:
            return _decode_protobuf(raw)
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError, RecursionError) as e:
            # NOTE: RecursionError: a body nested deeper than the parsers recurse.
            raise errors.bad_request(f"the body of the request could not be decoded: {e}") \
                from None

    async def _patch(self, request: web.Request, target: _Target,
                     name: str) -> web.Response:
        rt = target.rt
        if rt.crd and request.content_type == patch.STRATEGIC:
            raise errors.ApiError(
                415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {patch.JSON}, {patch.MERGE}, {patch.APPLY}")
        body = await self._body(request)
        current = self.store._get(rt, target.namespace, name)
        patched = patch.apply(request.content_type, current, body)
        obj, warnings = self.store._update(rt, target.namespace, name, patched,
                                           self._validation(request.query),
                                           subresource=target.sub)
        return _json(obj, 200, warnings)

    def _list(self, target: _Target, q: Mapping[str, str]) -> web.Response:
        rt = target.rt
        at_rv = None
        if q.get("resourceVersionMatch") == "Exact":
            at_rv = _int_param(q, "resourceVersion")
        result = self.store._list(
            rt, target.namespace, selectors.parse(q.get("labelSelector"), q.get("fieldSelector")),
            limit=_int_param(q, "limit") or 0, continue_token=q.get("continue", ""),
            at_rv=at_rv)
        meta: dict[str, Any] = {"resourceVersion": str(result.rv)}
        if result.continue_token:
            meta["continue"] = result.continue_token
        if result.remaining is not None:
            meta["remainingItemCount"] = result.remaining
        return _json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                      "metadata": meta, "items": result.items})

    def _delete_collection(self, target: _Target, q: Mapping[str, str]) -> web.Response:
        rt = target.rt
        sel = selectors.parse(q.get("labelSelector"), q.get("fieldSelector"))
        deleted = [
            self.store._delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], {})
            for obj in self.store._list(rt, target.namespace, sel).items
        ]
        return _json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})

    async def _watch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        """Stream events as JSON lines until the timeout, a drop, or the client leaves."""
        q = request.query
        since = _int_param(q, "resourceVersion")
        since = since or None  # unset and "0" both mean: current state first, then changes
        bookmarks = q.get("allowWatchBookmarks", "") in _TRUE
        timeout = _int_param(q, "timeoutSeconds")
        sel = selectors.parse(q.get("labelSelector"), q.get("fieldSelector"))
        resp = web.StreamResponse(headers={"Content-Type": _JSON,
                                           "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            watcher = self.store._watch(target.rt, target.namespace, sel, since)
        except errors.ApiError as e:
            # A real server answers an expired watch with 200 and a single ERROR event.
            await resp.prepare(request)
            await resp.write(_dump({"type": "ERROR", "object": e.status()}) + b"\n")
            await resp.write_eof()
            return resp
        try:
            await resp.prepare(request)
            await self._pump(resp, watcher, bookmarks, timeout)
        finally:
            self.store._unwatch(watcher)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def _pump(self, resp: web.StreamResponse, w: Watcher, bookmarks: bool,
                    timeout_s: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s else None
        next_bookmark = 0.0  # one bookmark right after the replay, then periodic ones
        rt = w.rt
        while not w.closed:
            lines = []
            while w.events:
                type_, obj = w.events.popleft()
                lines.append(_dump({"type": type_, "object": obj}) + b"\n")
            now = loop.time()
            if bookmarks and now >= next_bookmark and not w.events:
                # Invariant: the queue is drained and nothing awaited since, so every event up
                # to the store's current rv has been written to this stream.
                meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
                if next_bookmark == 0.0:
                    meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                lines.append(_dump({"type": "BOOKMARK", "object": {
                    "kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}) + b"\n")
                next_bookmark = now + self.bookmark_interval
            if lines:
                await resp.write(b"".join(lines))
                continue
            waits = [t - now for t in (deadline, next_bookmark if bookmarks else None)
                     if t is not None]
            if deadline is not None and now >= deadline:
                return
            w.wakeup.clear()  # no await since the queue was seen empty: no lost wakeup
            # NOTE: asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that arrives as the wakeup is set, and this loop would go on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits) if waits else None):
                    await w.wakeup.wait()


def _success(rt: ResourceType, deleted: Obj) -> dict[str, Any]:
    details: dict[str, Any] = {"name": deleted["metadata"]["name"], "kind": rt.plural,
                               "uid": deleted["metadata"]["uid"]}
    if rt.group:
        details["group"] = rt.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}


# --- protobuf request bodies -----------------------------------------------------------------


def _decode_protobuf(raw: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf body as the JSON object it stands for: ``k8s\\0`` then a
    runtime.Unknown {typeMeta {apiVersion, kind}, raw}. Only kinds with a ``proto`` in the
    table are understood (415 otherwise); answers are always JSON, which kubectl accepts."""
    if not raw.startswith(b"k8s\x00"):
        raise errors.bad_request("the body of the request could not be decoded: no k8s "
                                 "protobuf magic")
    try:
        unknown = _proto_message(raw[4:], {1: resources.ProtoField("typeMeta", {
            1: resources.ProtoField("apiVersion"), 2: resources.ProtoField("kind")}),
            2: resources.ProtoField("raw", "bytes")})
        meta = unknown.get("typeMeta") or {}
        rt = resources.any_kind(meta.get("apiVersion", ""), meta.get("kind", ""))
        if rt is None or rt.proto is None:
            raise errors.ApiError(
                415, "UnsupportedMediaType",
                f"the local API server does not decode {meta.get('kind')} from protobuf: "
                f"send {_JSON}")
        obj = _proto_message(unknown.get("raw", b""), rt.proto)
    except (IndexError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise errors.bad_request(f"the body of the request could not be decoded: {e}") \
            from None
    return {"apiVersion": rt.api_version, "kind": rt.kind, **obj}


def _proto_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value: int for varints, bytes otherwise) in order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = buf[i:i + width], i + width
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if shift > 63:
            # NOTE: a varint has at most 10 bytes; an unbounded one decodes in quadratic time.
            raise ValueError("varint longer than 10 bytes")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _proto_message(buf: bytes, message: resources.ProtoMessage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, wire, value in _proto_fields(buf):
        f = message.get(number)
        if f is None:
            continue  # as Go's decoder drops unknown fields
        if wire != (0 if f.type in ("int64", "bool") else 2):
            raise ValueError(f"wire type {wire} for {f.name}")
        if f.type == "map":
            entry = {n: v for n, w, v in _proto_fields(value) if w == 2}
            out.setdefault(f.name, {})[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
            continue
        item: Any
        if f.type == "string":
            item = value.decode()
        elif f.type == "bytes":
            item = value
        elif f.type == "int64":
            item = value - (1 << 64) if value >= 1 << 63 else value
        elif f.type == "bool":
            item = bool(value)
        elif isinstance(f.type, str):
            raise ValueError(f"unknown protobuf type {f.type}")
        else:
            item = _proto_message(value, f.type)
        if f.repeated:
            out.setdefault(f.name, []).append(item)
        elif item or f.pointer or isinstance(f.type, Mapping):
            out[f.name] = item
    return out


def _timestamp(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _group_versions() -> set[tuple[str, str]]:
    return set(resources.group_versions())


# --- kubeconfig, manifests, entry point ------------------------------------------------------


def write_kubeconfig(path: str | os.PathLike[str], clusters: Mapping[str, str]) -> None:
    """One context per cluster (context, cluster and user all named after it), plain http and
    no credentials; the first cluster is the current context."""
    names = list(clusters)
    if not names:
        raise ValueError("write_kubeconfig needs at least one cluster")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": n, "cluster": {"server": clusters[n]}} for n in names],
        "users": [{"name": n, "user": {}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n, "namespace": "default"}}
                     for n in names],
        "current-context": names[0],
    }
    # Written aside and renamed, so a process polling for the file never reads half of it.
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)


def load_manifests(store: Store, source: str | os.PathLike[str]) -> int:
    """Create every object of a YAML file (multi-document, ``kind: List`` too) or of every
    ``*.yaml``/``*.yml``/``*.json`` file in a directory, in name order. Returns the count."""
    src = Path(source)
    files = sorted(p for p in src.iterdir() if p.suffix in (".yaml", ".yml", ".json")) \
        if src.is_dir() else [src]
    count = 0
    for file in files:
        try:
            docs = _documents(file)
        except (ValueError, yaml.YAMLError, RecursionError) as e:  # not UTF-8, not JSON/YAML
            raise errors.bad_request(f"{file}: cannot be read as a manifest: {e}") from None
        for doc in docs:
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise errors.bad_request(f"{file}: a document is not an object")
            items = doc.get("items", []) if doc.get("kind") == "List" else [doc]
            if not isinstance(items, list):
                raise errors.bad_request(f"{file}: the items of a List are not a list")
            for obj in items:
                store.create(obj)
                count += 1
    return count


def _documents(file: Path) -> list[Any]:
    """The documents of a manifest file. JSON (one object, or an array of them) is read with
    ``json``, YAML with libyaml's loader where PyYAML has it: a mesh of thousands of objects
    takes seconds, not minutes, to load."""
    text = file.read_text()
    if file.suffix == ".json":
        loaded = json.loads(text)
        return loaded if isinstance(loaded, list) else [loaded]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return list(yaml.load_all(text, Loader=loader))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="navigator kube-api",
        description="Local Kubernetes API server for the lab (plain http, no auth).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=6443, help="API port (0: any free port)")
    p.add_argument("--name", default="kube", help="cluster name, for logs")
    p.add_argument("--control-port", type=int, default=None,
                   help="separate port for /_navigator hooks, health and metrics, which stays "
                        "up while the API is unreachable")
    p.add_argument("--load", action="append", default=[], metavar="FILE_OR_DIR",
                   help="YAML manifests to create at start (repeatable)")
    p.add_argument("--bookmark-interval", type=float, default=5.0,
                   help="seconds between watch bookmarks")
    p.add_argument("--service-cidr", default="10.96.0.0/16",
                   help="range that Service ClusterIPs are allocated from")
    p.add_argument("--token-key-file", default=None, metavar="FILE",
                   help="key that service-account tokens are signed with, created (mode 0600) "
                        "if missing, so a restarted server accepts the tokens it issued "
                        "(default: a random key per run)")
    p.add_argument("--service-account-issuer", default=tokens.DEFAULT_ISSUER, metavar="URL",
                   help="the iss claim of the tokens it issues and accepts")
    p.add_argument("--api-audiences", default="", metavar="LIST",
                   help="comma-separated audiences of the server itself, for tokens requested "
                        "and reviewed without any (default: the issuer)")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="write a kubeconfig for this server here once listening")
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace) -> None:
    srv = KubeApiServer(host=args.host, port=args.port, name=args.name,
                        bookmark_interval=args.bookmark_interval,
                        control_port=args.control_port, service_cidr=args.service_cidr,
                        token_key_file=args.token_key_file,
                        token_issuer=args.service_account_issuer,
                        api_audiences=[a for a in args.api_audiences.split(",") if a])
    for source in args.load:
        count = load_manifests(srv.store, source)
        log.info("manifests loaded", extra={"source": source, "objects": count})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await srv.start()
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, {args.name: srv.url})
    # Other processes wait for this line (the port may have been chosen by the kernel).
    log.info("kube-api ready", extra={"cluster": args.name, "url": srv.url,
                                      "control_port": srv.control_port,
                                      "kubeconfig": args.kubeconfig})
    try:
        await stopping.wait()
    finally:
        await srv.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runtime.setup_logging(args.log_level, component="kube-api")
    try:
        asyncio.run(_serve(args))
    except (errors.ApiError, tokens.Error, OSError, yaml.YAMLError) as e:
        log.error("kube-api failed", extra={"error": str(e)})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
