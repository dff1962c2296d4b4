"""Canary releases: a ``CanaryRelease`` splits a service's traffic across weighted backends.

Operators release a new version of a service as a separate Service (``item-canary`` next to
``item``) and move traffic to it step by step, in every cluster at once, with one object:

.. code-block:: yaml

    kind: CanaryRelease          # navigator.avito.ru/v1
    metadata: {namespace: shop, name: item}
    spec:
      backends:
        - {name: item, weight: 90}
        - {name: item-canary, weight: 10}

This module turns those objects into validated ``Canary`` values and sets the Envoy fields
that do the split. Like ``shards.translate`` it is pure: no I/O, and its result depends only
on its arguments. Translation makes four calls: ``resolve`` once for the mesh,
``apply_route`` / ``apply_tcp_proxy`` on the resources of each port of a canaried service,
and ``with_backends`` to make the backends visible to the apps that call the service.

Semantics, as an Istio user would expect from a VirtualService with weighted destinations:

* The CanaryRelease ``NS/N`` applies to the Service ``NS/N``: the service that clients call
  (its ClusterIP and DNS name stay as they are). Every sidecar that calls it, in every
  cluster, splits its traffic; the split is per request on HTTP ports (the route's
  ``weighted_clusters``) and per connection on L4 ports (``tcp_proxy``'s
  ``weighted_clusters``).
* For port ``P`` of the called service, backend ``BNS/B`` is the Envoy cluster ``BNS/B:P``:
  the backend's own port with the same number, with the backend's endpoints in every
  cluster and its own policy (load balancing, health checks, HTTP/2). A backend may be the
  called service itself (``item`` 90 / ``item-canary`` 10).
* Splits do not chain: traffic sent to a backend goes to the backend's plain Envoy cluster,
  even when the backend has a CanaryRelease of its own (which applies to its direct callers).
* Weights are non-negative integers that sum to exactly 100. A weight of 0 drains a backend:
  it is still validated (it must exist) and its clusters stay in the sidecars, so that moving
  weight back to it is a route change only (no cluster to warm up first), but it is left out
  of the split itself (Envoy's ``tcp_proxy`` rejects a weight of 0).
* A port is split only if every backend with a positive weight has that port. Otherwise the
  port keeps its plain route and ``CanaryBackendPortMissing`` (warning) says which backend
  lacks it; the other ports are still split (a canary that lacks, say, a metrics port still
  receives its share of the API port). A canary that cannot split any port is skipped
  (``CanaryBackendPortMissing``, error).
* Several clusters: the release applies mesh-wide as soon as one cluster has it (removing it
  means removing it everywhere). Identical specs in several clusters are one release. When
  specs differ, the spec of the first cluster by name wins, whether valid or not, and every
  other cluster whose spec differs gets a ``CanaryConflict`` warning.

Bad input is data: an invalid release is skipped with ``Diagnostic`` values (severity error)
and its service keeps its plain route; nothing else is affected. Reasons:
``CanaryUnknownService`` (no routable Service ``NS/N``), ``CanaryNoBackends``,
``CanaryInvalidWeight`` (negative or not an integer), ``CanaryWeightsNot100``,
``CanaryDuplicateBackend``, ``CanaryUnknownBackend``, ``CanaryBackendPortMissing`` and
``CanaryConflict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from navigator import model

if TYPE_CHECKING:
    from shards import translate

ServiceKey = tuple[str, str]
"""(namespace, name) of a Service."""

TOTAL_WEIGHT = 100

UNKNOWN_SERVICE = "CanaryUnknownService"
NO_BACKENDS = "CanaryNoBackends"
INVALID_WEIGHT = "CanaryInvalidWeight"
WEIGHTS_NOT_100 = "CanaryWeightsNot100"
DUPLICATE_BACKEND = "CanaryDuplicateBackend"
UNKNOWN_BACKEND = "CanaryUnknownBackend"
BACKEND_PORT_MISSING = "CanaryBackendPortMissing"
CONFLICT = "CanaryConflict"


@dataclasses.dataclass(frozen=True, slots=True)
class Canary:
    """A validated canary release of the Service ``namespace/name``."""

    namespace: str
    name: str
    backends: tuple[model.CanaryBackend, ...]
    """Sorted by (namespace, name); weights sum to 100; drained backends (weight 0) kept."""
    ports: frozenset[int]
    """The ports of the service that are split (every weighted backend has them)."""

    def split(self, port: int) -> tuple[tuple[str, int], ...]:
        """The (Envoy cluster, weight) pairs of a port; empty when the port is not split."""
        if port not in self.ports:
            return ()
        return tuple(
            (_envoy_name(b.namespace, b.name, port), b.weight)
            for b in self.backends
            if b.weight > 0
        )


def _envoy_name(namespace: str, name: str, port: int) -> str:
    # NOTE: imported here, as in shards.policy: shards.translate imports this module.
    from shards import translate

    return translate.envoy_name(namespace, name, port)


def _diagnostic(obj: str, reason: str, message: str, *, error: bool) -> translate.Diagnostic:
    from shards import translate

    severity = translate.Severity.ERROR if error else translate.Severity.WARNING
    return translate.Diagnostic(object=obj, reason=reason, message=message, severity=severity)


def _spec(release: model.CanaryRelease) -> tuple[model.CanaryBackend, ...]:
    return tuple(sorted(release.backends, key=lambda b: (b.namespace, b.name, b.weight)))


# --- resolution --------------------------------------------------------------------------


def resolve(
    releases: Iterable[model.CanaryRelease],
    services: Mapping[ServiceKey, Collection[int]],
) -> tuple[dict[ServiceKey, Canary], list[translate.Diagnostic]]:
    """Validates the CanaryRelease objects of every cluster: one ``Canary`` per service.

    ``services`` maps every routable service of the mesh (what ``translate.mesh_service``
    returned a ``MeshService`` for) to its port numbers. Returns the valid canaries by the
    (namespace, name) of the service they apply to, and the diagnostics, sorted.
    """
    by_key: dict[ServiceKey, dict[model.ClusterName, model.CanaryRelease]] = {}
    for release in releases:
        by_key.setdefault((release.namespace, release.name), {})[release.cluster] = release
    canaries: dict[ServiceKey, Canary] = {}
    diags: list[translate.Diagnostic] = []
    for key in sorted(by_key):
        by_cluster = by_key[key]
        clusters = sorted(by_cluster)
        spec = _spec(by_cluster[clusters[0]])
        obj = f"canaryreleases/{key[0]}/{key[1]}"
        agreeing = [c for c in clusters if _spec(by_cluster[c]) == spec]
        for other in clusters:
            if other not in agreeing:
                diags.append(
                    _diagnostic(
                        f"{obj}@{other}",
                        CONFLICT,
                        f"spec differs from the one in {clusters[0]}; using {clusters[0]}'s: "
                        f"{_describe(spec)}",
                        error=False,
                    )
                )
        at_fault = f"{obj}@{agreeing[0]}" if len(agreeing) == 1 else obj
        canary, problems = _validate(key, spec, services, obj=at_fault)
        diags.extend(problems)
        if canary is not None:
            canaries[key] = canary
    return canaries, sorted(diags)


def _describe(spec: Iterable[model.CanaryBackend]) -> str:
    return ", ".join(f"{b.namespace}/{b.name}={b.weight}" for b in spec) or "no backends"


def _validate(
    key: ServiceKey,
    spec: tuple[model.CanaryBackend, ...],
    services: Mapping[ServiceKey, Collection[int]],
    *,
    obj: str,
) -> tuple[Canary | None, list[translate.Diagnostic]]:
    """One release's spec against the mesh: a Canary, or None and why it was skipped."""
    errors: list[translate.Diagnostic] = []

    def error(reason: str, message: str) -> None:
        errors.append(_diagnostic(obj, reason, message, error=True))

    own_ports = services.get(key)
    if own_ports is None:
        error(UNKNOWN_SERVICE, f"service {key[0]}/{key[1]} does not exist in any cluster")
    if not spec:
        error(NO_BACKENDS, "spec.backends is empty")
        return None, errors
    bad = [b for b in spec if type(b.weight) is not int or b.weight < 0]
    for b in bad:
        error(
            INVALID_WEIGHT,
            f"backend {b.namespace}/{b.name}: weight {b.weight!r} is not a non-negative integer",
        )
    if not bad and sum(b.weight for b in spec) != TOTAL_WEIGHT:
        error(
            WEIGHTS_NOT_100,
            f"weights sum up to {sum(b.weight for b in spec)}, not {TOTAL_WEIGHT}: "
            f"{_describe(spec)}",
        )
    seen: set[ServiceKey] = set()
    for b in spec:
        ref = (b.namespace, b.name)
        if ref in seen:
            error(DUPLICATE_BACKEND, f"backend {b.namespace}/{b.name} is listed more than once")
            continue
        seen.add(ref)
        if ref not in services:
            error(
                UNKNOWN_BACKEND,
                f"backend service {b.namespace}/{b.name} does not exist in any cluster "
                "(or is headless or ExternalName)",
            )
    if errors or own_ports is None:
        return None, errors

    warnings: list[translate.Diagnostic] = []
    split: set[int] = set()
    for port in sorted(own_ports):
        lacking = [b for b in spec if b.weight > 0 and port not in services[(b.namespace, b.name)]]
        if not lacking:
            split.add(port)
            continue
        warnings.append(
            _diagnostic(
                obj,
                BACKEND_PORT_MISSING,
                f"port {port} is not split: backend "
                f"{', '.join(f'{b.namespace}/{b.name}' for b in lacking)} has no port {port}; "
                f"{key[0]}/{key[1]}:{port} keeps its plain route",
                error=False,
            )
        )
    if not split:
        return None, [
            _diagnostic(
                obj,
                BACKEND_PORT_MISSING,
                "no port of the service can be split: every port lacks in some backend",
                error=True,
            ),
            *warnings,
        ]
    return Canary(namespace=key[0], name=key[1], backends=spec, ports=frozenset(split)), warnings


# --- visibility --------------------------------------------------------------------------


def backend_services(canary: Canary) -> tuple[ServiceKey, ...]:
    """The services whose Envoy clusters and endpoints a caller of the canaried service needs.

    Every backend other than the service itself, drained ones included (see the module
    docstring), sorted.
    """
    own = (canary.namespace, canary.name)
    return tuple(sorted({(b.namespace, b.name) for b in canary.backends} - {own}))


def with_backends(
    wanted: Iterable[ServiceKey], canaries: Mapping[ServiceKey, Canary]
) -> list[ServiceKey]:
    """The services an app sees: ``wanted`` (its Nexus) plus the backends of their canaries.

    NOTE: not transitive, as splits do not chain: the backends' own canaries are not followed.
    """
    wanted = list(wanted)
    out = set(wanted)
    for key in wanted:
        found = canaries.get(key)
        if found is not None:
            out.update(backend_services(found))
    return sorted(out)


# --- Envoy fields ------------------------------------------------------------------------


def apply_route(
    action: route_components_pb2.RouteAction, canary: Canary | None, port: int
) -> route_components_pb2.RouteAction:
    """Replaces the action's ``cluster`` with the canary's ``weighted_clusters`` in place.

    A port the canary does not split (or no canary) leaves the action as it is.
    """
    split = canary.split(port) if canary is not None else ()
    if not split:
        return action
    action.ClearField("cluster")
    action.weighted_clusters.SetInParent()
    del action.weighted_clusters.clusters[:]
    for name, weight in split:
        entry = action.weighted_clusters.clusters.add(name=name)
        entry.weight.value = weight
    return action


def apply_tcp_proxy(
    proxy: tcp_proxy_pb2.TcpProxy, canary: Canary | None, port: int
) -> tcp_proxy_pb2.TcpProxy:
    """Replaces the proxy's ``cluster`` with the canary's ``weighted_clusters`` in place."""
    split = canary.split(port) if canary is not None else ()
    if not split:
        return proxy
    proxy.ClearField("cluster")
    proxy.weighted_clusters.SetInParent()
    del proxy.weighted_clusters.clusters[:]
    for name, weight in split:
        proxy.weighted_clusters.clusters.add(name=name, weight=weight)
    return proxy
