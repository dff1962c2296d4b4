"""The watcher without ``--kubeconfig``: the pod's service account, or a one-line exit 2.

The in-cluster path is the official client's own loader, pointed at a token and a CA in
tmp_path and at an HTTPS server standing in for the API server: a request must reach it at
``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, verified with that CA, carrying
the token. The command itself runs as a process with a clean environment.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from navigator.watcher import informer

TOKEN = "service-account-token-1"


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def service_account(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(token file, CA file, API server certificate, its key), as a pod would have them."""
    d = tmp_path / "serviceaccount"
    d.mkdir()
    ca, ca_key = d / "ca.crt", d / "ca.key"
    cert, key, csr, ext = d / "api.pem", d / "api.key", d / "api.csr", d / "api.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=k8s")
    _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver")
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext,
    )  # fmt: skip
    token = d / "token"
    token.write_text(TOKEN)
    return token, ca, cert, key


@pytest.fixture
async def api_server(
    service_account: tuple[Path, Path, Path, Path],
) -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTPS server on 127.0.0.1 answering ``GET /api/v1/nodes``; yields its port and the
    Authorization header of every request it got."""
    _, _, cert, key = service_account
    seen: list[str] = []

    async def nodes(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "NodeList", "apiVersion": "v1", "items": []})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.add_routes([web.get("/api/v1/nodes", nodes)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        yield port, seen
    finally:
        await runner.cleanup()


async def test_in_cluster_requests_go_to_the_service_host_with_the_token(
    service_account: tuple[Path, Path, Path, Path], api_server: tuple[int, list[str]]
) -> None:
    token, ca, _, _ = service_account
    port, seen = api_server
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    assert informer.in_cluster_available(environ)
    api = informer.KubeApi.in_cluster(token_file=token, ca_file=ca, environ=environ)
    try:
        assert api.host == f"https://127.0.0.1:{port}"
        doc = await api.get("/api/v1/nodes")
    finally:
        await api.close()
    assert doc["kind"] == "NodeList"
    assert [header.lower() for header in seen] == [f"bearer {TOKEN}"]


async def test_in_cluster_configuration_has_the_host_ca_and_bearer_token(
    service_account: tuple[Path, Path, Path, Path],
) -> None:
    token, ca, _, _ = service_account
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    configuration = informer.in_cluster_configuration(token_file=token, ca_file=ca, environ=environ)
    assert configuration.host == "https://[fd00::1]:6443"
    assert configuration.ssl_ca_cert == str(ca)
    auth = (await configuration.auth_settings())["BearerToken"]
    assert (auth["in"], auth["key"], auth["value"]) == (
        "header",
        "authorization",
        f"bearer {TOKEN}",
    )


@pytest.mark.parametrize(
    ("environ", "files", "reason"),
    [
        pytest.param({}, ("token", "ca"), "host/port is not set", id="not-in-a-pod"),
        pytest.param(
            {"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "443"},
            ("token", "ca"),
            "set but empty",
            id="empty-host",
        ),
        pytest.param(None, ("ca",), "token file does not exist", id="no-token"),
        pytest.param(None, ("empty-token", "ca"), "Token file exists but empty", id="empty-token"),
        pytest.param(None, ("token",), "certification file does not exist", id="no-ca"),
    ],
)
def test_an_unusable_service_account_is_one_line(
    tmp_path: Path, environ: dict[str, str] | None, files: tuple[str, ...], reason: str
) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    if "token" in files:
        token.write_text(TOKEN)
    if "empty-token" in files:
        token.write_text("")
    if "ca" in files:
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
    if environ is None:
        environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(informer.KubeConfigError) as caught:
        informer.in_cluster_configuration(token_file=token, ca_file=ca, environ=environ)
    message = str(caught.value)
    assert message.startswith("in-cluster configuration: ")
    assert reason in message
    assert "\n" not in message


async def test_a_ca_that_is_not_pem_is_one_line(
    service_account: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    token, _, _, _ = service_account
    ca = tmp_path / "not-a-ca.crt"
    ca.write_text("not a certificate\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(informer.KubeConfigError) as caught:
        informer.KubeApi.in_cluster(token_file=token, ca_file=ca, environ=environ)
    message = str(caught.value)
    assert message.startswith(f"in-cluster configuration: CA {ca}: ")
    assert "\n" not in message


def _watcher(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "navigator", "watcher", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )


def test_without_kubeconfig_or_pod_the_watcher_exits_2_in_one_line() -> None:
    done = _watcher("--cluster", "x", env={})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "navigator watcher: give --kubeconfig, or run in a pod "
        "($KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT are not set)"
    )


IN_A_POD = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}


def test_context_without_kubeconfig_exits_2_in_one_line() -> None:
    done = _watcher("--cluster", "x", "--context", "east", env=IN_A_POD)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "navigator watcher: --context needs --kubeconfig"


@pytest.mark.skipif(
    Path(informer.SERVICE_ACCOUNT_TOKEN).exists(), reason="runs in a pod: a token is there"
)
def test_in_a_pod_without_kubeconfig_the_watcher_uses_the_service_account() -> None:
    """The service host is set but this is no pod: the watcher takes the in-cluster path and
    says which file the service account lacks (before any etcd call)."""
    done = _watcher("--cluster", "x", "--http", "127.0.0.1:0", env=IN_A_POD)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "navigator watcher: in-cluster configuration: Service token file does not exist."
    )
