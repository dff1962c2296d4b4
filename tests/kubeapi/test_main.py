"""The blocking entry point, run as a separate process as the CLI and chaos scenarios do."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from navigator.kubeapi import server


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        server.main(["--help"])
    assert e.value.code == 0
    assert "--load" in capsys.readouterr().out


def test_write_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    server.write_kubeconfig(path, {"east": "http://127.0.0.1:1234",
                                   "west": "http://127.0.0.1:5678"})
    data = yaml.safe_load(path.read_text())
    assert data["current-context"] == "east"
    assert [c["name"] for c in data["contexts"]] == ["east", "west"]
    api = config.new_client_from_config(str(path), context="west")
    try:
        assert api.configuration.host == "http://127.0.0.1:5678"
    finally:
        api.close()


async def test_main_serves_loaded_manifests_and_stops_on_sigterm(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "a.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: apps}\n"
        "spec: {ports: [{port: 80}]}\n---\n"
        "apiVersion: navigator.avito.ru/v1\nkind: Gateway\nmetadata: {name: g}\n"
        "spec: {ingressClass: nginx, port: 80}\n")
    kubeconfig = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from navigator.kubeapi.server import main; "
        "sys.exit(main(sys.argv[1:]))",
        "--port", "0", "--name", "east", "--load", str(manifests),
        "--kubeconfig", str(kubeconfig), stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        lines = []
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 10)
            assert line, b"".join(lines)
            lines.append(line)
            record = json.loads(line)
            if record["msg"] == "kube-api ready":
                break
        assert record["cluster"] == "east" and record["level"] == "info"
        api = config.new_client_from_config(str(kubeconfig))
        try:
            services = await asyncio.to_thread(
                client.CoreV1Api(api).list_service_for_all_namespaces)
            gateways = await asyncio.to_thread(
                client.CustomObjectsApi(api).list_cluster_custom_object,
                "navigator.avito.ru", "v1", "gateways")
        finally:
            api.close()
        assert [s.metadata.name for s in services.items] == ["a"]
        assert [(g["metadata"]["namespace"], g["metadata"]["name"])
                for g in gateways["items"]] == [("default", "g")]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        assert await proc.wait() == 0
    assert json.loads(rest.splitlines()[-1])["msg"] == "kube-api stopped"
