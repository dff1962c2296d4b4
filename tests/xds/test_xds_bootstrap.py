"""The sidecar bootstrap: rendered by ``navigator bootstrap`` and accepted by a real Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from xds_helpers import envoy_path

from navigator import bootstrap


def _validate(path: Path) -> None:
    out = subprocess.run(
        [str(envoy_path()), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cli_output_is_a_valid_envoy_bootstrap(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_IP", "10.1.2.3")
    argv = ["--app", "shop", "--cluster", "c1", "--zone", "z1", "--node-id", "shop-1", "-o", fmt]
    assert bootstrap.main(argv) == 0
    text = capsys.readouterr().out
    doc = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
    assert doc["node"]["metadata"] == {"app": "shop", "k8s_cluster": "c1"}
    assert doc["node"]["cluster"] == "shop"
    xds = doc["static_resources"]["clusters"][0]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "10.1.2.3", "port_value": 18000}
    path = tmp_path / f"bootstrap.{fmt}"
    path.write_text(text)
    _validate(path)


def test_a_hostname_uses_dns_and_validates(tmp_path: Path) -> None:
    doc = bootstrap.render(
        node_id="n", app="a", cluster="c", zone="z", xds_host="localhost", xds_port=1
    )
    assert doc["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    _validate(path)


def test_without_host_ip_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOST_IP", raising=False)
    with pytest.raises(bootstrap.BootstrapError, match="HOST_IP"):
        bootstrap.render(node_id="n", app="a", cluster="c", zone="z")
    assert bootstrap.main(["--app", "a", "--cluster", "c", "--zone", "z"]) == 2
