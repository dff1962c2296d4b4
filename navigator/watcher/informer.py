"""List + watch of one kind of one Kubernetes cluster, handing changes to the sync store.

Why ``kubernetes.aio`` and no thread: the installed ``kubernetes`` (37) ships an asyncio
client, so every kind's list/watch loop is a task on the process's one event loop. Stopping is
a task cancellation that closes the HTTP stream at once; there is no blocking call to wait out
and no thread to leak. We use the official client for what makes it official (kubeconfig and
in-cluster configuration, auth, TLS, the aiohttp session) and read the watch stream ourselves
rather than through ``kubernetes.aio.watch.Watch``: that helper deserializes into snake_case
models (the converter wants the API's camelCase JSON), and silently retries a 410 once before
raising it, while an informer must relist on the first 410 and diff.

The loop for each kind (like client-go's reflector):

1. list (paged), hand every object to the store, then ``store.listed(kind, identities)``: the
   store deletes what it holds of that kind and the listing lacks, so deletions made while
   we were not watching (after a 410) are not lost;
2. watch from the listing's resourceVersion with bookmarks; a stream that ends or breaks is
   re-opened from the last resourceVersion seen (object or bookmark);
3. on 410 Gone (compacted history), go to 1; also when ``relist`` is called (a replica's term
   starts: ``runner``) and when the cycle is cancelled by anything but its owner.

Exceptions (raised by ``KubeApi``, handled inside ``Informer.run``)::

    KubeError
    ├── Unreachable    no answer (connection refused, reset, timeout, 5xx): retried, logged
    │                  once per outage, and nothing is deleted meanwhile
    ├── Expired        410: the resourceVersion was compacted; relist
    ├── NotServed      404 on the collection: the kind does not exist on that server
    └── ApiFailure     any other error answer
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import tenacity
from kubernetes.aio import client as kclient
from kubernetes.aio.config import config_exception, incluster_config, kube_config

from navigator import keys, model
from navigator.watcher import convert, metrics, store

log = logging.getLogger(__name__)

MESH_GROUP = "navigator.avito.ru"
DISCOVERY_GROUP = "discovery.k8s.io"
NETWORKING_GROUP = "networking.k8s.io"


class KubeError(Exception):
    """Base of the errors of this module."""


class Unreachable(KubeError):
    """The API server did not answer."""


class Expired(KubeError):
    """410 Gone: the requested resourceVersion is no longer available."""


class NotServed(KubeError):
    """404 on a collection: the server does not serve this kind."""


class ApiFailure(KubeError):
    """The API server answered with an error."""


class KubeConfigError(KubeError):
    """The kubeconfig (or the pod's service account) cannot be read or lacks the context;
    the message is one line."""


SERVICE_ACCOUNT_TOKEN = incluster_config.SERVICE_TOKEN_FILENAME
SERVICE_ACCOUNT_CA = incluster_config.SERVICE_CERT_FILENAME


def in_cluster_available(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs in a pod: Kubernetes sets these for every container."""
    return bool(
        environ.get(incluster_config.SERVICE_HOST_ENV_NAME)
        and environ.get(incluster_config.SERVICE_PORT_ENV_NAME)
    )


def in_cluster_configuration(
    *,
    token_file: str | Path = SERVICE_ACCOUNT_TOKEN,
    ca_file: str | Path = SERVICE_ACCOUNT_CA,
    environ: Mapping[str, str] = os.environ,
) -> kclient.Configuration:
    """The pod's service account: the API server at ``https://$KUBERNETES_SERVICE_HOST:
    $KUBERNETES_SERVICE_PORT``, checked against ``ca_file``, with the bearer token of
    ``token_file``. Raises KubeConfigError (one line) when they are missing or empty.

    NOTE: the client's own in-cluster loader, with its token refresh on: before a request
    it reads ``token_file`` again once a minute has passed since the last read (its
    ``refresh_api_key_hook``), so the projected token, which the kubelet rotates in place,
    never goes stale. The CA is read when the client is made.
    """
    configuration = kclient.Configuration()
    try:
        incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(token_file),
            cert_filename=str(ca_file),
            try_refresh_token=True,
            environ=environ,
        ).load_and_set(configuration)
    except (config_exception.ConfigException, OSError) as exc:
        reason = (str(exc) or type(exc).__name__).strip().splitlines()[0]
        raise KubeConfigError(f"in-cluster configuration: {reason}") from exc
    return configuration


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """A collection the watcher lists and watches (cluster-wide, every namespace)."""

    kind: model.Kind
    group: str
    version: str
    plural: str

    @property
    def path(self) -> str:
        if not self.group:
            return f"/api/{self.version}/{self.plural}"
        return f"/apis/{self.group}/{self.version}/{self.plural}"

    @property
    def custom(self) -> bool:
        """A custom resource of the mesh: its CRD may not be installed."""
        return self.group == MESH_GROUP

    @property
    def optional(self) -> bool:
        """The server may lack it: a mesh CRD, EndpointSlices (``discovery.k8s.io``) or
        Ingresses (``networking.k8s.io/v1``, served since Kubernetes 1.19)."""
        return self.custom or self.group in (DISCOVERY_GROUP, NETWORKING_GROUP)


RESOURCES: tuple[Resource, ...] = (
    Resource(model.Kind.SERVICE, "", "v1", "services"),
    Resource(model.Kind.ENDPOINTS, "", "v1", "endpoints"),
    Resource(model.Kind.ENDPOINT_SLICE, DISCOVERY_GROUP, "v1", "endpointslices"),
    Resource(model.Kind.NODE, "", "v1", "nodes"),
    Resource(model.Kind.CANARY, MESH_GROUP, "v1", "canaryreleases"),
    Resource(model.Kind.NEXUS, MESH_GROUP, "v1", "nexuses"),
    Resource(model.Kind.GATEWAY, MESH_GROUP, "v1", "gateways"),
    Resource(model.Kind.INGRESS, NETWORKING_GROUP, "v1", "ingresses"),
)


class KubeApi:
    """The few HTTP calls an informer makes, over the official client's configured session."""

    def __init__(self, api_client: kclient.ApiClient, *, request_timeout: float = 30.0) -> None:
        self._client = api_client
        self._request_timeout = request_timeout

    @classmethod
    async def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeApi:
        """Raises KubeConfigError (one line) when the file or the context is unusable."""
        configuration = kclient.Configuration()
        try:
            await kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except Exception as exc:  # NOTE: yaml, I/O, missing keys: all mean "cannot use it".
            reason = (str(exc) or type(exc).__name__).strip().splitlines()[0]
            raise KubeConfigError(f"kubeconfig {path}: {reason}") from exc
        try:
            # NOTE: the client loads the CA and client certificate here, into its TLS context.
            return cls(kclient.ApiClient(configuration))
        except (ssl.SSLError, OSError) as exc:
            raise KubeConfigError(f"kubeconfig {path}: TLS material: {exc}") from exc

    @classmethod
    def in_cluster(
        cls,
        *,
        token_file: str | Path = SERVICE_ACCOUNT_TOKEN,
        ca_file: str | Path = SERVICE_ACCOUNT_CA,
        environ: Mapping[str, str] = os.environ,
    ) -> KubeApi:
        """The API server of the pod this runs in (``in_cluster_configuration``); raises
        KubeConfigError (one line) also when the CA is not PEM."""
        configuration = in_cluster_configuration(
            token_file=token_file, ca_file=ca_file, environ=environ
        )
        try:
            # NOTE: the client loads the CA here, into its TLS context.
            api_client = kclient.ApiClient(configuration)
        except (ssl.SSLError, OSError) as exc:
            raise KubeConfigError(f"in-cluster configuration: CA {ca_file}: {exc}") from exc
        return cls(api_client)

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def _request(
        self, path: str, query: Mapping[str, str], client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        method, url, headers, _, _ = await self._client.param_serialize(
            "GET",
            path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            rest = await self._client.call_api(
                method, url, header_params=headers, _request_timeout=client_timeout
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{self.host}: {_describe(exc)}") from exc
        resp: aiohttp.ClientResponse = rest.response
        if resp.status >= 300:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError):
                body = b""
            finally:
                resp.release()
            raise _status_error(resp.status, body, f"GET {path}")
        return resp

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, sock_connect=5.0)
        resp = await self._request(path, query or {}, timeout)
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{self.host}: {_describe(exc)}") from exc
        finally:
            resp.release()
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ApiFailure(f"GET {path}: response is not JSON") from exc
        if not isinstance(doc, dict):
            raise ApiFailure(f"GET {path}: response is not a JSON object")
        return doc

    async def watch(
        self, path: str, query: Mapping[str, str], *, idle_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, until the server ends the stream; breaks raise Unreachable."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=idle_timeout)
        resp = await self._request(path, {**query, "watch": "true"}, timeout)
        buffer = b""
        try:
            # NOTE: split lines ourselves: one event (a large Endpoints) can exceed
            # aiohttp's readline limit.
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:end], buffer[end + 1 :]
                    if line.strip():
                        yield _parse_event(line, path)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{self.host}: watch broken: {_describe(exc)}") from exc
        finally:
            resp.close()
        if buffer.strip():
            yield _parse_event(buffer, path)


def _parse_event(line: bytes, path: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiFailure(f"watch {path}: event is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiFailure(f"watch {path}: malformed event")
    return event


def _status_error(code: int, body: bytes, what: str) -> KubeError:
    message = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            message = str(doc.get("message", ""))
    except ValueError:
        message = body[:200].decode(errors="replace")
    text = f"{what}: {code} {message}".strip()
    if code == 410:
        return Expired(text)
    if code == 404:
        return NotServed(text)
    if code >= 500 or code == 429:
        return Unreachable(text)
    return ApiFailure(text)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Reachability:
    """Whether a cluster's API server answers, shared by its informers; tells the store.

    NOTE: an outage is logged once when it starts and once when it ends, however many
    informers and retries see it.
    """

    def __init__(self, cluster: model.ClusterName, sink: store.SyncStore | None = None) -> None:
        self.cluster = cluster
        self._sink = sink
        self._down = False
        self._seen = False
        metrics.API_REACHABLE.labels(cluster).set(1)

    @property
    def reachable(self) -> bool:
        return not self._down

    def down(self, exc: BaseException) -> None:
        if not self._down:
            log.warning(
                "Kubernetes API unreachable; keeping the cluster's last state (marked stale), "
                "retrying",
                extra={"cluster": self.cluster, "error": str(exc)},
            )
            metrics.API_REACHABLE.labels(self.cluster).set(0)
            if self._sink is not None:
                self._sink.api_reachable(False, str(exc))
        self._down = True

    def up(self) -> None:
        if self._down:
            log.info("Kubernetes API reachable again", extra={"cluster": self.cluster})
            metrics.API_REACHABLE.labels(self.cluster).set(1)
        if (self._down or not self._seen) and self._sink is not None:
            self._sink.api_reachable(True)
        self._down = False
        self._seen = True


class Informer:
    """Keeps the store in step with one kind of one cluster; ``run`` until cancelled."""

    def __init__(
        self,
        *,
        cluster: model.ClusterName,
        api: KubeApi,
        resource: Resource,
        sink: store.SyncStore,
        reachability: Reachability,
        watch_timeout: int = 30,
        page_size: int = 500,
        max_backoff: float = 5.0,
        not_served_retry: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.resource = resource
        self._api = api
        self._sink = sink
        self._reach = reachability
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._max_backoff = max_backoff
        self._not_served_retry = not_served_retry
        self._lists = 0
        self._not_served_logged = False
        self._bad: dict[keys.StateKey, str] = {}
        """Objects skipped as malformed, with the reason already logged."""
        self._cycle: asyncio.Task[None] | None = None
        """The current listing and the watch that follows it."""
        self._relist_asked = False
        self._watching = False

    @property
    def kind(self) -> model.Kind:
        return self.resource.kind

    def relist(self) -> None:
        """Drops the current watch and lists again, now: what this informer handed the store
        is then the API's state at this moment, whatever a watch may have missed."""
        # NOTE: a listing under way already gives the state of now; only a watch is ended.
        if self._watching and self._cycle is not None and not self._cycle.done():
            self._relist_asked = True
            self._cycle.cancel()

    async def run(self) -> None:
        """Lists and watches until cancelled; never ends on its own."""
        while True:
            # NOTE: the listing and its watch run as a task of their own, so that ``relist``
            # can end them at any await, and so that a cancellation this task was not asked
            # for (a library's stray CancelledError ends the cycle, not the informer) is told
            # apart from our own cancellation (``cancelling``) and answered with a relist.
            self._cycle = asyncio.create_task(
                self._list_and_watch(), name=f"informer-{self.cluster}-{self.kind.value}"
            )
            try:
                await self._cycle
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                if self._relist_asked:
                    log.info(
                        "relisting on request",
                        extra={"cluster": self.cluster, "kind": self.kind.value},
                    )
                else:
                    log.error(
                        "informer's list/watch was cancelled from outside, relisting",
                        extra={"cluster": self.cluster, "kind": self.kind.value},
                    )
                self._relist_asked = False
            except Expired as exc:
                log.info(
                    "watch expired, relisting",
                    extra={"cluster": self.cluster, "kind": self.kind.value, "error": str(exc)},
                )
            except Exception:
                # NOTE: a bug must not stop this kind for good; relisting is always safe.
                log.exception(
                    "informer failed, relisting",
                    extra={"cluster": self.cluster, "kind": self.kind.value},
                )
                await asyncio.sleep(self._max_backoff)

    async def _list_and_watch(self) -> None:
        rv = await self._list_until_done()
        self._watching = True
        try:
            await self._watch_from(rv)
        finally:
            self._watching = False

    # --- list -----------------------------------------------------------------------------

    async def _list_until_done(self) -> str:
        """Lists until a listing succeeds; returns its resourceVersion."""
        while True:
            try:
                return await self._list_retrying()
            except NotServed as exc:
                await self._not_served(exc)

    async def _list_retrying(self) -> str:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type((Unreachable, ApiFailure, Expired)),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=self._max_backoff),
            before_sleep=self._list_failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._list_once()
        raise AssertionError("unreachable")  # pragma: no cover

    def _list_failed(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Unreachable):
            self._reach.down(exc)
        elif exc is not None and state.attempt_number == 1:
            log.warning(
                "listing failed, retrying",
                extra={"cluster": self.cluster, "kind": self.kind.value, "error": str(exc)},
            )

    async def _list_once(self) -> str:
        items: list[Any] = []
        query = {"limit": str(self._page_size)}
        while True:
            # NOTE: an expired continue token (410) restarts the whole listing (tenacity).
            page = await self._api.get(self.resource.path, query)
            meta = page.get("metadata") or {}
            items.extend(page.get("items") or [])
            token = meta.get("continue")
            if not token:
                break
            query = {"limit": str(self._page_size), "continue": str(token)}
        rv = str(meta.get("resourceVersion") or "")
        self._reach.up()
        self._not_served_logged = False

        present: set[keys.StateKey] = set()
        for raw in items:
            ident = self._apply(raw)
            if ident is not None:
                present.add(ident)
        # NOTE: the store diffs this listing against what it holds: deletions made while no
        # watch was running are applied here, never while the API is unreachable.
        self._sink.listed(self.kind, present)
        metrics.EVENTS.labels(self.cluster, self.kind.value, "LISTED").inc(len(items))
        if self._lists:
            metrics.RELISTS.labels(self.cluster, self.kind.value).inc()
        self._lists += 1
        log.info(
            "listed",
            extra={
                "cluster": self.cluster,
                "kind": self.kind.value,
                "objects": len(items),
                "rv": rv,
            },
        )
        return rv

    async def _not_served(self, exc: NotServed) -> None:
        """A 404 on the collection: conservative handling, then a slow retry.

        Only an optional resource (a mesh CRD, or EndpointSlices on a server older than
        ``discovery.k8s.io/v1``) whose group/version the server's discovery does not list
        counts as "listed, unknown": the store then keeps its keys (they are neither written
        nor deleted) so the cluster can still be marked synced. A 404 for a core kind, or for
        an optional resource discovery does list, is an error and blocks the synced marker.
        """
        unknown = self.resource.optional and await self._discovery_lacks_resource()
        if not self._not_served_logged:
            log.warning(
                "kind not served by this API server, retrying slowly",
                extra={
                    "cluster": self.cluster,
                    "kind": self.kind.value,
                    "path": self.resource.path,
                    "keeping_keys": unknown,
                    "error": str(exc),
                },
            )
            self._not_served_logged = True
        if unknown:
            self._sink.listed(self.kind, None)
        await asyncio.sleep(self._not_served_retry)

    async def _discovery_lacks_resource(self) -> bool:
        try:
            doc = await self._api.get(f"/apis/{self.resource.group}/{self.resource.version}")
        except NotServed:
            return True
        except KubeError:
            return False
        resources = doc.get("resources") or []
        return not any(
            isinstance(r, dict) and r.get("name") == self.resource.plural for r in resources
        )

    # --- watch ----------------------------------------------------------------------------

    async def _watch_from(self, rv: str) -> None:
        """Watches from ``rv`` for ever; raises Expired when the history is gone."""
        backoff = 0.0
        while True:
            query = {
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(self._watch_timeout),
            }
            try:
                async for event in self._api.watch(
                    self.resource.path, query, idle_timeout=self._watch_timeout + 15.0
                ):
                    self._reach.up()
                    backoff = 0.0
                    rv = self._on_event(event) or rv
                # NOTE: the server ended the stream (timeoutSeconds): resume from rv.
            except NotServed as exc:
                raise Expired(f"collection gone: {exc}") from exc
            except (Unreachable, ApiFailure) as exc:
                if isinstance(exc, Unreachable):
                    self._reach.down(exc)
                else:
                    log.warning(
                        "watch failed, resuming",
                        extra={"cluster": self.cluster, "kind": self.kind.value, "error": str(exc)},
                    )
                backoff = min(self._max_backoff, max(0.1, backoff * 2))
                await asyncio.sleep(backoff)

    def _on_event(self, event: dict[str, Any]) -> str:
        """Applies one watch event; returns its resourceVersion ("" if it has none)."""
        etype = str(event.get("type", ""))
        obj: dict[str, Any] = event["object"]
        metrics.EVENTS.labels(self.cluster, self.kind.value, etype).inc()
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Expired(f"watch {self.resource.path}: {obj.get('message', '')}")
            raise ApiFailure(f"watch {self.resource.path}: {code} {obj.get('message', '')}")
        meta = obj.get("metadata")
        rv = str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""
        if etype in ("ADDED", "MODIFIED"):
            self._apply(obj)
        elif etype == "DELETED":
            try:
                ident = convert.identity(self.cluster, self.kind, obj)
            except convert.ConversionError as exc:
                self._report_bad(None, obj, str(exc))
            else:
                self._bad.pop(ident, None)
                self._sink.delete(ident)
        return rv

    def _apply(self, raw: Any) -> keys.StateKey | None:
        """Hands one present object to the store; returns its identity (None: unidentifiable)."""
        try:
            ident = convert.identity(self.cluster, self.kind, raw)
        except convert.ConversionError as exc:
            self._report_bad(None, raw, str(exc))
            return None
        try:
            obj = convert.convert(self.cluster, self.kind, raw)
        except convert.ConversionError as exc:
            # NOTE: the object is skipped, not deleted: etcd keeps serving its last good
            # value (if any) until it is fixed or deleted in the API.
            self._report_bad(ident, raw, str(exc))
            self._sink.keep(ident)
            return ident
        self._bad.pop(ident, None)
        self._sink.upsert(obj)
        return ident

    def _report_bad(self, ident: keys.StateKey | None, raw: Any, reason: str) -> None:
        if ident is not None:
            if self._bad.get(ident) == reason:
                return
            self._bad[ident] = reason
            namespace, name = ident.namespace, ident.name
        else:
            meta = raw.get("metadata") if isinstance(raw, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        metrics.CONVERSION_ERRORS.labels(self.cluster, self.kind.value).inc()
        where = f"{namespace}/{name}" if namespace else name
        log.warning(
            f"skipping malformed {self.kind.value} {where} in cluster {self.cluster}: {reason}",
            extra={
                "cluster": self.cluster,
                "kind": self.kind.value,
                "namespace": namespace,
                "object": name,
                "reason": reason,
            },
        )
