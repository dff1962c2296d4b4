"""Lab pods as network namespaces: routing between clusters, AnyIP interception, cleanup.

Every address used here is inside a namespace or on a bridge these tests made, and every
connection is made while that namespace exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from coordinator import etcd as etcd_mod
from navigator import bootstrap
from navigator.lab import netns, procs
from navigator.xds import server as xds_server

ROOT = "nvt"
"""Not the lab's root: sweeping it never touches a lab running on this machine."""

CLUSTERS = (
    netns.ClusterNet("east", "198.18.101.0/24", "198.19.101.0/24", "198.18.100.1"),
    netns.ClusterNet("west", "198.18.102.0/24", "198.19.102.0/24", "198.18.100.2"),
)

SERVER = """
import socket, sys
host, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen()
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        conn.sendall(f"{tag} {peer[0]}".encode())
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    print(s.recv(100).decode())
"""


StartServer = Callable[[netns.Pod, str, int, str], subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def needs_netns() -> None:
    ok, why = netns.available(ROOT)
    if not ok:
        pytest.skip(f"network namespaces unavailable here: {why}")


@pytest.fixture
def net(needs_netns: None) -> Iterator[netns.Network]:
    with netns.Network(netns.new_prefix(ROOT), CLUSTERS) as network:
        yield network
    assert _ours(network.prefix) == []


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[StartServer]:
    started: list[subprocess.Popen[bytes]] = []

    def start(pod: netns.Pod, host: str, port: int, tag: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{tag}.log"
        args = [*pod.exec_prefix, sys.executable, "-c", SERVER, host, str(port), tag]
        proc = procs.start(args, log_file=log)
        started.append(proc)
        deadline = time.monotonic() + 10
        while "listening" not in log.read_text():
            assert proc.poll() is None, f"server {tag} exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"server {tag} did not listen"
            time.sleep(0.02)
        return proc

    yield start
    for proc in started:
        procs.stop(proc, timeout=2)


def _client(pod: netns.Pod, host: str, port: int) -> str:
    """Connects from inside ``pod``; the client's own PID is killed on timeout."""
    done = subprocess.run(
        [*pod.exec_prefix, sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _ours(prefix: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    found = [line.split()[0] for line in names.stdout.splitlines()]
    found += [line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()]
    return [n for n in found if n.startswith(prefix)]


def _ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


@pytest.fixture
def host_server() -> Iterator[Callable[[str], int]]:
    """A TCP server in the host namespace (as the xDS front-end is), on a given address."""
    sockets: list[socket.socket] = []

    def start(host: str) -> int:
        srv = socket.socket()
        sockets.append(srv)
        srv.bind((host, 0))
        srv.listen()

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, peer = srv.accept()
                    with conn:
                        conn.sendall(f"host {peer[0]}".encode())

        threading.Thread(target=serve, daemon=True).start()
        return int(srv.getsockname()[1])

    yield start
    for srv in sockets:
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)
        srv.close()


def test_pod_ips_are_routable_between_clusters(net: netns.Network, run_server: StartServer) -> None:
    east_a, east_b = net.add_pod("east", "a"), net.add_pod("east", "b", "198.18.101.20")
    west_a, west_b = net.add_pod("west", "a"), net.add_pod("west", "b")
    assert east_a.ip == "198.18.101.254" and east_b.ip == "198.18.101.20"
    assert west_a.ip != west_b.ip

    server = run_server(east_b, east_b.ip, 8080, "east-b")
    # `ip netns exec` execs the command: the PID we hold (and stop) is the server's own.
    assert b"-c" in Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert _client(west_a, east_b.ip, 8080) == f"east-b {west_a.ip}"
    assert _client(east_a, east_b.ip, 8080) == f"east-b {east_a.ip}"

    run_server(west_b, west_b.ip, 8080, "west-b")
    assert _client(east_a, west_b.ip, 8080) == f"west-b {east_a.ip}"


def test_intercepted_pod_binds_a_cluster_ip(net: netns.Network, run_server: StartServer) -> None:
    pod = net.add_pod("east", "web")
    pod.intercept()
    pod.intercept()
    assert pod.intercepted == ["198.19.101.0/24"]
    run_server(pod, "198.19.101.10", 80, "sidecar")
    assert _client(pod, "198.19.101.10", 80) == "sidecar 198.19.101.10"


def test_two_pods_bind_the_same_cluster_ip_port(
    net: netns.Network, run_server: StartServer
) -> None:
    web, shop = net.add_pod("east", "web"), net.add_pod("east", "shop")
    for pod in (web, shop):
        pod.intercept("198.19.101.0/24")
        run_server(pod, "198.19.101.10", 8890, pod.name)
    assert _client(web, "198.19.101.10", 8890).startswith("web ")
    assert _client(shop, "198.19.101.10", 8890).startswith("shop ")


def test_pods_reach_the_host_at_node_addresses(
    net: netns.Network, host_server: Callable[[str], int]
) -> None:
    east, west = net.add_pod("east", "web"), net.add_pod("west", "web")
    east_node, west_node = CLUSTERS[0].node_ip, CLUSTERS[1].node_ip
    port = host_server(east_node)
    assert _client(east, east_node, port) == f"host {east.ip}"
    assert _client(west, east_node, port) == f"host {west.ip}"
    port = host_server(west_node)
    assert _client(west, west_node, port) == f"host {west.ip}"


async def test_envoy_in_a_pod_reaches_xds_at_its_node_address(
    net: netns.Network, etcd: etcd_mod.Etcd, tmp_path: Path
) -> None:
    """The xDS front-end stays on the host; the sidecar dials the node address (HOST_IP)."""
    pod = net.add_pod("east", "web")
    pod.intercept()
    async with xds_server.serve(etcd=etcd, listen=f"{pod.node_ip}:0", grace=0.2) as xds:
        doc = bootstrap.render(
            node_id="east-web-0",
            app="web",
            cluster="east",
            zone="z1",
            xds_host=pod.node_ip,
            xds_port=xds.port,
            admin_address=pod.ip,
            admin_port=9901,
        )
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(doc))
        envoy = procs.start(
            [
                *pod.exec_prefix, str(procs.envoy_binary()), "-c", str(config),
                "--concurrency", "1", "--disable-hot-restart", "-l", "warning",
            ],
            log_file=tmp_path / "envoy.log",
        )  # fmt: skip
        try:
            url = f"http://{pod.ip}:9901/stats?filter=control_plane.connected_state"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
                for _ in range(100):
                    assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(url) as resp:
                            if "control_plane.connected_state: 1" in await resp.text():
                                break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("Envoy in the pod never connected to xDS at the node address")
        finally:
            await asyncio.to_thread(procs.stop, envoy, timeout=5)


def test_intercept_refuses_lab_ranges(net: netns.Network) -> None:
    pod = net.add_pod("east", "web")
    with pytest.raises(netns.NetnsError, match="overlaps"):
        pod.intercept("198.18.102.0/24")


def test_add_pod_validates(net: netns.Network) -> None:
    net.add_pod("east", "web", "198.18.101.5")
    with pytest.raises(netns.NetnsError, match="not a host address"):
        net.add_pod("east", "x", "198.18.102.5")
    with pytest.raises(netns.NetnsError, match="already taken"):
        net.add_pod("east", "y", "198.18.101.5")
    with pytest.raises(netns.NetnsError, match="already exists"):
        net.add_pod("east", "web")
    with pytest.raises(netns.NetnsError, match="unknown cluster"):
        net.add_pod("north", "web")


def test_setup_refuses_ranges_the_host_routes(net: netns.Network) -> None:
    other = netns.Network(netns.new_prefix(ROOT), CLUSTERS)
    with pytest.raises(netns.NetnsError, match="overlaps the host route"), other:
        pass
    assert _ours(other.prefix) == []


def test_teardown_removes_everything_and_is_idempotent(needs_netns: None) -> None:
    before = _ip_forward()
    network = netns.Network(netns.new_prefix(ROOT), CLUSTERS)
    try:
        network.teardown()
        network.setup()
        network.add_pod("east", "a").intercept()
        network.add_pod("west", "a")
        assert len(_ours(network.prefix)) == 6
    finally:
        network.teardown()
    assert _ours(network.prefix) == []
    network.teardown()
    assert _ip_forward() == before
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "198.18.10" not in routes


def test_teardown_after_a_failed_setup(needs_netns: None) -> None:
    prefix = netns.new_prefix(ROOT)
    squatter = f"{prefix}b1"
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    try:
        with pytest.raises(netns.NetnsError, match="File exists"), netns.Network(prefix, CLUSTERS):
            pass
        assert _ours(prefix) == [squatter]
    finally:
        subprocess.run(["ip", "link", "delete", squatter], check=False)


def test_sweep_removes_a_crashed_lab_and_nothing_else(needs_netns: None) -> None:
    crashed = netns.Network(netns.new_prefix(ROOT), CLUSTERS)
    decoy_ns, decoy_link = f"{ROOT}-keep", f"{ROOT}keepb0"
    try:
        crashed.setup()
        crashed.add_pod("east", "a").intercept()
        crashed.add_pod("west", "b")
        subprocess.run(["ip", "netns", "add", decoy_ns], check=True)
        subprocess.run(["ip", "link", "add", decoy_link, "type", "bridge"], check=True)

        swept = netns.sweep(ROOT)

        assert sorted(swept) == sorted(_names_of(crashed))
        assert _ours(crashed.prefix) == []
        assert sorted(_ours(ROOT)) == sorted([decoy_ns, decoy_link])
        assert netns.sweep(ROOT) == []
    finally:
        crashed.teardown()
        subprocess.run(["ip", "netns", "delete", decoy_ns], check=False)
        subprocess.run(["ip", "link", "delete", decoy_link], check=False)


def test_network_validates_its_ranges() -> None:
    with pytest.raises(netns.NetnsError, match="bad prefix"):
        netns.Network("nv12")
    with pytest.raises(netns.NetnsError, match="bad prefix root"):
        netns.new_prefix("ab")
    clash = netns.ClusterNet("north", "198.18.101.128/25", "198.19.200.0/24", "198.18.200.1")
    with pytest.raises(netns.NetnsError, match="overlaps pod range of east"):
        netns.Network("nvt0000", (*CLUSTERS, clash))
    node_in_services = netns.ClusterNet("north", "198.18.7.0/24", "198.19.7.0/24", "198.19.7.1")
    with pytest.raises(netns.NetnsError, match="overlaps"):
        netns.Network("nvt0000", (node_in_services,))
    with pytest.raises(netns.NetnsError, match="cluster name"):
        netns.Network(
            "nvt0000", (netns.ClusterNet("East", "198.18.7.0/24", "198.19.7.0/24", "198.18.6.1"),)
        )
    assert [c.name for c in netns.DEFAULT_CLUSTERS] == ["east", "west"]


def _names_of(network: netns.Network) -> list[str]:
    return [
        *(p.netns for p in network.pods),
        *(p.veth for p in network.pods),
        *(network.bridge(c) for c in network.clusters),
    ]
