"""The sidecar bootstrap: rendered by ``navigator bootstrap`` and accepted by a real Envoy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from xds_helpers import envoy_path

from navigator import balancer, bootstrap, envoy_extras
from navigator.lab import procs
from navigator.xds import server as xds_server


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
    assert doc["node"]["metadata"] == {
        "app": "shop",
        "k8s_cluster": "c1",
        "admin": "127.0.0.1:19000",
    }
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


def test_delta_bootstrap_selects_incremental_ads_and_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--app", "a", "--cluster", "c", "--zone", "z", "--xds", "10.0.0.1:18000", "--delta"]
    assert bootstrap.main([*argv, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ads = doc["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    backoff = ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert backoff == {"base_interval": "0.1s", "max_interval": "2s"}
    path = tmp_path / "delta.json"
    path.write_text(json.dumps(doc))
    _validate(path)


def test_balancer_config_listens_at_host_ip_and_checks_every_front_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_IP", "10.1.2.3")
    argv = ["--frontend", "10.0.0.1", "--frontend", "10.0.0.2:19000:9200", "-o", "json"]
    assert balancer.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    listeners = {lst["name"]: lst for lst in doc["static_resources"]["listeners"]}
    assert listeners["xds"]["address"]["socket_address"] == {
        "address": "10.1.2.3",
        "port_value": 18000,
    }
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    xds = clusters[balancer.XDS_CLUSTER]
    hosts = [
        (
            e["endpoint"]["address"]["socket_address"]["port_value"],
            e["endpoint"]["health_check_config"]["port_value"],
        )
        for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert hosts == [(18010, 9110), (19000, 9200)]
    assert xds["health_checks"][0]["http_health_check"]["path"] == "/readyz"
    keepalive = xds["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert keepalive == {"interval": "1s", "timeout": "1s"}
    path = tmp_path / "balancer.json"
    path.write_text(json.dumps(doc))
    _validate(path)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "at least one front-end"),
        (["--frontend", "10.0.0.1:notaport"], "HOST[:GRPC_PORT[:HTTP_PORT]]"),
        (["--frontend", "10.0.0.1:1:2:3"], "HOST[:GRPC_PORT[:HTTP_PORT]]"),
    ],
)
def test_balancer_config_refuses_bad_input_in_one_line(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert balancer.main([*argv, "--listen", "10.1.2.3"]) == 2
    err = capsys.readouterr().err
    assert error in err
    assert len(err.strip().splitlines()) == 1


async def test_stats_listener_serves_metrics_and_ready_but_not_the_admin(
    tmp_path: Path, xds: xds_server.Handle
) -> None:
    stats, admin = procs.free_port(), procs.free_port()
    path = tmp_path / "bootstrap.json"
    doc = bootstrap.render(
        node_id="shop-1",
        app="shop",
        cluster="c1",
        zone="z1",
        xds_host="127.0.0.1",
        xds_port=xds.port,
        admin_port=admin,
    )
    envoy_extras.add_stats(doc, "127.0.0.1", stats)
    path.write_text(json.dumps(doc))
    envoy = await asyncio.to_thread(
        subprocess.Popen,
        [str(envoy_path()), "-c", str(path), "-l", "error", "--base-id", str(stats)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def check() -> None:
        # NOTE: static listeners open once Envoy has its first config from the front-end.
        procs.wait_tcp("127.0.0.1", stats, timeout=30)
        status, text = get(f"http://127.0.0.1:{stats}/metrics")
        assert status == 200
        assert "envoy_server_uptime" in text
        assert get(f"http://127.0.0.1:{stats}/ready") == (200, "LIVE\n")
        # Nothing else of the admin is reachable there (it could drain or stop Envoy).
        assert get(f"http://127.0.0.1:{stats}/quitquitquit")[0] == 404
        assert envoy.poll() is None

    try:
        await asyncio.to_thread(check)
    finally:
        envoy.terminate()
        await asyncio.to_thread(envoy.wait, 20)
