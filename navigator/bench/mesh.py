"""The generated mesh of ``navigator bench``: what the API servers hold, who the sidecars are,
and the endpoint changes the churn phases make.

Sizes (issue 7): ``S`` for CI, ``L`` the mesh the project is designed for: 2,000 services
x 20 endpoints over 2 clusters and 4 zones (each service exists in both clusters, half its
endpoints in each, spread over the cluster's two zones), 1,000 apps whose Nexus names 20
services each, 5,000 sidecars (5 per app, in the app's cluster, zones alternating). Every
service has two ports (``http`` 8080 and ``tcp-db`` 5432), so an endpoint change touches two
EDS resources per receiving sidecar. One more app, ``full``, has a Nexus naming every service:
the real Envoy of that app is the full-mesh sidecar whose memory is compared with a scoped
one's.

Everything is deterministic (``random.Random(7)``) and on loopback addresses: endpoints
``127.21/16`` (east) and ``127.22/16`` (west), endpoints made by churn ``127.23/16`` and
``127.24/16``, ClusterIPs ``127.31/16`` and ``127.32/16``. Nothing listens on them: the
benchmark measures configuration, not traffic.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any

CLUSTERS = ("east", "west")
ZONES = {"east": ("r1-a", "r1-b"), "west": ("r2-a", "r2-b")}
REGIONS = {"east": "r1", "west": "r2"}
PORTS = (("http", 8080), ("tcp-db", 5432))
NEXUS_NAMESPACE = "apps"
FULL_APP = "full"


@dataclasses.dataclass(frozen=True, slots=True)
class Size:
    name: str
    services: int
    endpoints: int
    """Per service, over both clusters."""
    apps: int
    per_app: int
    """Services in each app's Nexus."""
    sidecars: int
    client_procs: int
    """Processes the simulated sidecars are spread over."""
    envoys: int
    """Real Envoys: ``envoys - 1`` scoped ones (apps 0, 1, ...) and one of app ``full``."""
    serial: int
    """Changes made one at a time."""
    rates: tuple[int, ...]
    """Steady churn rates, changes per second."""
    churn_s: float
    """Seconds of each steady churn phase."""
    rollout: int
    """Pods replaced in the roll-out burst."""
    rollout_services: int


SIZES = {
    "S": Size("S", 200, 10, 100, 10, 500, 4, 5, 30, (20, 50, 100), 5.0, 100, 20),
    "L": Size("L", 2000, 20, 1000, 20, 5000, 8, 5, 100, (20, 50, 100), 10.0, 500, 50),
}


def app_name(a: int) -> str:
    return f"app{a}"


def service_ref(s: int) -> tuple[str, str]:
    return f"ns{s % 50}", f"svc{s}"


def eds_names(s: int) -> tuple[str, ...]:
    """The EDS resources of service ``s``, one per port (``namespace/name:port``)."""
    ns, name = service_ref(s)
    return tuple(f"{ns}/{name}:{port}" for _, port in PORTS)


def _ip(second: int, n: int) -> str:
    return f"127.{second}.{n // 250 % 250}.{n % 250 + 1}"


@dataclasses.dataclass(frozen=True, slots=True)
class Sidecar:
    id: str
    app: str
    cluster: str
    region: str
    zone: str
    frontend: int
    delta: bool

    def spec(self) -> dict[str, str]:
        return {
            "id": self.id,
            "app": self.app,
            "cluster": self.cluster,
            "region": self.region,
            "zone": self.zone,
        }


class Mesh:
    """The generated mesh; also tracks each Endpoints object's addresses through the churn."""

    def __init__(self, size: Size) -> None:
        self.size = size
        rnd = random.Random(7)
        self.nexus: dict[str, tuple[int, ...]] = {
            app_name(a): tuple(sorted(rnd.sample(range(size.services), size.per_app)))
            for a in range(size.apps)
        }
        self.nexus[FULL_APP] = tuple(range(size.services))
        self.home = {app_name(a): CLUSTERS[a % 2] for a in range(size.apps)}
        self.home[FULL_APP] = CLUSTERS[0]
        self.apps_of: dict[int, list[str]] = collections.defaultdict(list)
        for app, services in self.nexus.items():
            for s in services:
                self.apps_of[s].append(app)
        per_cluster = size.endpoints // len(CLUSTERS)
        # (cluster, service) -> [ip, ...] in age order: churn replaces the oldest first.
        self.addresses: dict[tuple[str, int], list[str]] = {
            (cluster, s): [_ip(21 + ci, s * per_cluster + e) for e in range(per_cluster)]
            for ci, cluster in enumerate(CLUSTERS)
            for s in range(size.services)
        }
        self._made = dict.fromkeys(CLUSTERS, 0)
        self.sidecars = [self._sidecar(j) for j in range(size.sidecars)]

    def _sidecar(self, j: int) -> Sidecar:
        app = app_name(j % self.size.apps)
        copy = j // self.size.apps
        cluster = self.home[app]
        return Sidecar(
            id=f"sc-{j}",
            app=app,
            cluster=cluster,
            region=REGIONS[cluster],
            zone=ZONES[cluster][copy % 2],
            frontend=j % 2,
            delta=(j // 2) % 2 == 1,
        )

    def expected_eds(self, app: str) -> int:
        """EDS resources a sidecar of ``app`` holds once complete."""
        return len(self.nexus[app]) * len(PORTS)

    # -- what the API servers hold ------------------------------------------------------

    def manifests(self, cluster: str) -> list[dict[str, Any]]:
        ci = CLUSTERS.index(cluster)
        docs: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in sorted({f"ns{s % 50}" for s in range(self.size.services)} | {NEXUS_NAMESPACE})
        ]
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node_name(cluster, zi),
                    "labels": {
                        "topology.kubernetes.io/region": REGIONS[cluster],
                        "topology.kubernetes.io/zone": zone,
                    },
                },
            }
            for zi, zone in enumerate(ZONES[cluster])
        ]
        for s in range(self.size.services):
            ns, name = service_ref(s)
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "type": "ClusterIP",
                        "clusterIP": f"127.{31 + ci}.{s // 250}.{s % 250 + 1}",
                        "ports": [
                            {"name": pn, "port": p, "targetPort": p, "protocol": "TCP"}
                            for pn, p in PORTS
                        ],
                    },
                }
            )
            docs.append(self.endpoints_body(cluster, s))
        docs += [
            {
                "apiVersion": "navigator.avito.ru/v1",
                "kind": "Nexus",
                "metadata": {"name": app, "namespace": NEXUS_NAMESPACE},
                "spec": {
                    "appName": app,
                    "services": [
                        {"namespace": service_ref(s)[0], "name": service_ref(s)[1]}
                        for s in services
                    ],
                },
            }
            for app, services in self.nexus.items()
            if self.home[app] == cluster
        ]
        return docs

    def endpoints_body(self, cluster: str, s: int) -> dict[str, Any]:
        ns, name = service_ref(s)
        ips = self.addresses[(cluster, s)]
        return {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns},
            "subsets": [
                {
                    "addresses": [
                        {"ip": ip, "nodeName": node_name(cluster, e % 2)}
                        for e, ip in enumerate(ips)
                    ],
                    "ports": [{"name": pn, "port": p, "protocol": "TCP"} for pn, p in PORTS],
                }
            ],
        }

    # -- churn ---------------------------------------------------------------------------

    def replace_oldest(self, cluster: str, s: int) -> str:
        """A pod of service ``s`` in ``cluster`` replaced: its oldest address goes, a new one
        comes. Returns the new address."""
        ci = CLUSTERS.index(cluster)
        new = _ip(23 + ci, self._made[cluster])
        self._made[cluster] += 1
        ips = self.addresses[(cluster, s)]
        ips.pop(0)
        ips.append(new)
        return new


def node_name(cluster: str, zone_index: int) -> str:
    return f"{cluster}-n{zone_index}"
