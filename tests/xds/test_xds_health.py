"""A sidecar's /healthz comes from the control plane: no config, no health.

A sidecar of an app without a snapshot of its own (no Nexus) receives the translator's
default snapshot, which holds only the health listener; until that reaches it, the probe
fails. Real etcd, the real front-end and a real Envoy.
"""

from __future__ import annotations

import aiohttp
import xds_helpers as h
from xds_helpers import StartEnvoy, http_get

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.lab import procs
from navigator.xds import server as xds_server
from shards import translate


async def test_healthz_answers_only_once_the_config_arrived(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy
) -> None:
    port = procs.free_port()
    options = translate.Options(health_port=port)
    sidecar = envoy(app="no-nexus", k8s_cluster="c1")
    await h.eventually(lambda: _connected(sidecar), what="the sidecar connected to the front-end")
    # Connected, but nothing to serve yet: the probe fails.
    try:
        await http_get(f"http://127.0.0.1:{port}/healthz", limit=1)
        raise AssertionError("/healthz answered before any config was served")
    except (aiohttp.ClientError, OSError):
        pass

    default = translate.app_snapshot(keys.DEFAULT_APP, model.ClusterName("c1"), [], options)
    revision = await etcd.put(
        keys.app_snapshot_key(keys.DEFAULT_APP, model.ClusterName("c1")),
        snapshot.encode_app(default),
    )
    await h.applied(xds.cache, revision)

    async def healthy() -> bool:
        status, body = await http_get(f"http://127.0.0.1:{port}/healthz")
        return status == 200 and body == "ok\n"

    await h.eventually(healthy, what="/healthz from the default snapshot")
    assert await sidecar.listener_names() == {translate.HEALTH_LISTENER}


async def _connected(sidecar: h.Envoy) -> bool:
    stats = await sidecar.admin("/stats?filter=control_plane.connected_state")
    return "control_plane.connected_state: 1" in stats
