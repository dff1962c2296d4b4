"""The etcd client over TLS, against a real etcd that requires client certificates.

A throwaway CA signs etcd's certificate (SAN IP:127.0.0.1) and the client's; a second CA
signed neither. etcd runs with ``--client-cert-auth``, so a client without a certificate, or
one that does not trust etcd's CA, fails its calls with an EtcdError within its retry budget
instead of hanging. The commands' options (``--etcd-ca/--etcd-cert/--etcd-key`` and their
environment variables) are checked through ``runtime.etcd_client`` and one real command.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator import etcd as etcd_mod
from navigator import runtime
from navigator.lab import procs

ENV_VARS = ("NAVIGATOR_ETCD", "NAVIGATOR_ETCD_CA", "NAVIGATOR_ETCD_CERT", "NAVIGATOR_ETCD_KEY")


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here."""


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _new_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext_file,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = _new_ca(directory, "ca")
    server = _issue(
        directory,
        "etcd",
        ca,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(directory, "navigator", ca, "extendedKeyUsage=clientAuth\n")
    other_ca, _ = _new_ca(directory, "other-ca")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: Pki) -> Iterator[str]:
    """A one-member etcd serving clients only over TLS, only to certificates of ``pki.ca``;
    yields its ``https://`` client URL."""
    port, peer_port = procs.free_port(), procs.free_port()
    client_url, peer_url = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    args = procs._etcd_args(
        "etcd0",
        tmp_path / "etcd",
        client_url=client_url,
        peer_url=peer_url,
        initial=f"etcd0={peer_url}",
        state="new",
    )
    args += [
        "--cert-file", str(pki.server_cert),
        "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca),
        "--client-cert-auth",
    ]  # fmt: skip
    proc = procs.start(args, log_file=tmp_path / "etcd.log")
    try:
        procs.wait_tcp("127.0.0.1", port, proc=proc)
        yield client_url
    finally:
        procs.stop(proc)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No etcd option comes from the environment the tests run in."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runtime.add_etcd_argument(parser)
    return parser.parse_args(argv)


def _tls_flags(pki: Pki, *, ca: Path | None = None) -> list[str]:
    return [
        "--etcd-ca", str(ca or pki.ca),
        "--etcd-cert", str(pki.client_cert),
        "--etcd-key", str(pki.client_key),
    ]  # fmt: skip


async def _round_trip(etcd: etcd_mod.Etcd, key: str) -> None:
    """A put, a get and a watch that sees a later put: every kind of call works."""
    first = await etcd.put(key, b"1")
    got = await etcd.get(key)
    assert got is not None and got.value == b"1" and got.mod_revision == first

    async def next_event() -> etcd_mod.Event:
        async for ev in etcd.watch_key(key, start_revision=first + 1):
            return ev
        raise AssertionError("the watch ended")

    watching = asyncio.create_task(next_event())
    second = await etcd.put(key, b"2")
    ev = await asyncio.wait_for(watching, 10)
    assert (ev.key, ev.value, ev.revision) == (key, b"2", second)


async def test_put_get_and_watch_over_tls_with_a_client_certificate(
    tls_etcd: str, pki: Pki
) -> None:
    tls = etcd_mod.Tls.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with etcd_mod.Etcd(tls_etcd, tls=tls, timeout=2.0, retry_for=10.0) as etcd:
        assert etcd.endpoints == [tls_etcd.removeprefix("https://")]
        await _round_trip(etcd, "/tls/a")
    status = await etcd_mod.member_status(tls_etcd, tls=tls)
    assert status.is_leader
    assert status.revision >= 2


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        pytest.param("ca-only", "handshake", id="no-client-certificate"),
        pytest.param("plaintext", "", id="plaintext-to-a-tls-member"),
        pytest.param("other-ca", "CERTIFICATE_VERIFY_FAILED", id="ca-did-not-sign-etcd"),
        pytest.param("system-roots", "CERTIFICATE_VERIFY_FAILED", id="https-system-roots"),
    ],
)
async def test_a_client_etcd_does_not_accept_fails_within_its_budget(
    tls_etcd: str, pki: Pki, client: str, reason: str
) -> None:
    address = tls_etcd.removeprefix("https://")
    tls: etcd_mod.Tls | None
    endpoints = tls_etcd
    if client == "ca-only":
        tls = etcd_mod.Tls.from_files(ca=pki.ca)
    elif client == "plaintext":
        tls, endpoints = None, address
    elif client == "other-ca":
        tls = etcd_mod.Tls.from_files(ca=pki.other_ca, cert=pki.client_cert, key=pki.client_key)
    else:
        tls = None  # NOTE: https:// alone: TLS checked against the system's roots.
    etcd = etcd_mod.Etcd(endpoints, tls=tls, timeout=1.0, retry_for=1.0)
    try:
        async with asyncio.timeout(15):
            with pytest.raises(etcd_mod.EtcdUnavailable) as caught:
                await etcd.put("/tls/refused", b"x")
            with pytest.raises(etcd_mod.EtcdUnavailable):
                await etcd_mod.member_status(endpoints, tls=tls, within=1.0)
    finally:
        await etcd.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"etcd {address} unavailable: ")
    assert reason.lower() in message.lower()


@pytest.mark.parametrize(
    ("make", "part", "reason"),
    [
        pytest.param(lambda p: {"cert": p.client_cert}, "cert", "needs its key", id="cert-no-key"),
        pytest.param(lambda p: {"key": p.client_key}, "key", "needs its cert", id="key-no-cert"),
        pytest.param(lambda p: {"ca": p.ca.with_name("nope.pem")}, "ca", "cannot read", id="no-ca"),
        pytest.param(lambda p: {"ca": p.client_key}, "ca", "no PEM certificate", id="ca-is-a-key"),
        pytest.param(
            lambda p: {"cert": p.client_key, "key": p.client_key},
            "cert",
            "no PEM certificate",
            id="cert-is-a-key",
        ),
        pytest.param(
            lambda p: {"cert": p.client_cert, "key": p.client_cert},
            "key",
            "no PEM private key",
            id="key-is-a-cert",
        ),
        pytest.param(
            lambda p: {"cert": p.client_cert, "key": p.server_key},
            "key",
            "not the key of the client certificate",
            id="key-of-another-cert",
        ),
    ],
)
def test_unusable_tls_files_are_refused_before_connecting(
    pki: Pki, make: Callable[[Pki], dict[str, Path]], part: str, reason: str
) -> None:
    with pytest.raises(etcd_mod.TlsError) as caught:
        etcd_mod.Tls.from_files(**make(pki))
    assert caught.value.part == part
    assert reason in caught.value.reason


def test_the_client_key_stays_out_of_repr(pki: Pki) -> None:
    tls = etcd_mod.Tls.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert tls.key == pki.client_key.read_bytes()
    assert "PRIVATE KEY" not in repr(tls)
    assert "CERTIFICATE" in repr(tls)


@pytest.mark.parametrize(
    ("endpoints", "tls", "error"),
    [
        pytest.param(
            "https://127.0.0.1:1,http://127.0.0.2:1", False, "mix http:// and https://", id="mix"
        ),
        pytest.param("http://127.0.0.1:1", True, "http:// but TLS", id="http-with-tls"),
        pytest.param("unix:///tmp/etcd.sock", False, "http or https", id="unix"),
        pytest.param("127.0.0.1", False, "not host:port", id="no-port"),
    ],
)
def test_endpoints_that_cannot_be_used_are_a_value_error(
    endpoints: str, tls: bool, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        etcd_mod.Etcd(endpoints, tls=etcd_mod.Tls() if tls else None)


def test_bare_endpoints_take_tls_when_it_is_given() -> None:
    assert etcd_mod.Etcd("127.0.0.1:1").tls is None
    assert etcd_mod.Etcd("https://127.0.0.1:1").tls == etcd_mod.Tls()
    tls = etcd_mod.Tls()
    assert etcd_mod.Etcd("127.0.0.1:1,127.0.0.2:1", tls=tls).tls is tls
    assert etcd_mod.parse_endpoints("https://127.0.0.1:1,127.0.0.2:1") == [
        "127.0.0.1:1",
        "127.0.0.2:1",
    ]


@pytest.mark.usefixtures("clean_env")
async def test_etcd_client_from_the_command_line_options(tls_etcd: str, pki: Pki) -> None:
    args = _args(["--etcd", tls_etcd, *_tls_flags(pki)])
    async with runtime.etcd_client(args, timeout=2.0, retry_for=10.0) as etcd:
        assert etcd.tls is not None and etcd.tls.ca == pki.ca.read_bytes()
        await _round_trip(etcd, "/tls/flags")


async def test_etcd_client_from_the_environment(
    tls_etcd: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAVIGATOR_ETCD", tls_etcd)
    monkeypatch.setenv("NAVIGATOR_ETCD_CA", str(pki.ca))
    monkeypatch.setenv("NAVIGATOR_ETCD_CERT", str(pki.client_cert))
    monkeypatch.setenv("NAVIGATOR_ETCD_KEY", str(pki.client_key))
    async with runtime.etcd_client(_args([]), timeout=2.0, retry_for=10.0) as etcd:
        assert etcd.tls is not None and etcd.tls.cert == pki.client_cert.read_bytes()
        await _round_trip(etcd, "/tls/env")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("flags", "error"),
    [
        pytest.param(
            ["--etcd-ca", "{missing}"], "--etcd-ca {missing}: cannot read it", id="missing-ca"
        ),
        pytest.param(
            ["--etcd-cert", "{cert}"], "--etcd-cert needs --etcd-key", id="cert-without-key"
        ),
        pytest.param(["--etcd-key", "{key}"], "--etcd-key needs --etcd-cert", id="key-no-cert"),
        pytest.param(
            ["--etcd-ca", "{key}"], "--etcd-ca {key}: no PEM certificate", id="ca-not-pem"
        ),
        pytest.param(
            ["--etcd-cert", "{cert}", "--etcd-key", "{ca_key}"],
            "--etcd-key {ca_key}: not the key of the client certificate",
            id="key-of-another-cert",
        ),
        pytest.param(
            ["--etcd", "http://127.0.0.1:1", "--etcd-ca", "{ca}"],
            "--etcd http://127.0.0.1:1: etcd endpoints are http:// but TLS",
            id="http-with-ca",
        ),
    ],
)
def test_etcd_client_refuses_unusable_options_in_one_line_naming_the_option(
    pki: Pki, flags: list[str], error: str
) -> None:
    names = {
        "missing": str(pki.ca.with_name("missing.pem")),
        "cert": str(pki.client_cert),
        "key": str(pki.client_key),
        "ca": str(pki.ca),
        "ca_key": str(pki.server_key),
    }
    argv = [flag.format(**names) for flag in flags]
    with pytest.raises(ValueError) as caught:
        runtime.etcd_client(_args(argv))
    message = str(caught.value)
    assert message.startswith(error.format(**names)), message
    assert "\n" not in message


def _navigator(*argv: str) -> subprocess.CompletedProcess[str]:
    """``navigator`` as an operator runs it: no etcd option, nor gRPC's verbosity, inherited."""
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_VARS, "GRPC_VERBOSITY")}
    return subprocess.run(
        [sys.executable, "-m", "navigator", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_navigator_weight_over_tls(tls_etcd: str, pki: Pki) -> None:
    done = _navigator("weight", "--etcd", tls_etcd, *_tls_flags(pki), "--force", "east", "40")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "east: weight 40"
    shown = _navigator("weight", "--etcd", tls_etcd, *_tls_flags(pki), "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"east": 40}


def test_navigator_weight_with_a_wrong_ca_fails_in_one_line(tls_etcd: str, pki: Pki) -> None:
    done = _navigator("weight", "--etcd", tls_etcd, *_tls_flags(pki, ca=pki.other_ca))
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("navigator weight: etcd 127.0.0.1:")
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]


def test_navigator_weight_with_a_missing_key_fails_in_one_line(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.key"
    done = _navigator(
        "weight", "--etcd", "https://127.0.0.1:1", "--etcd-cert", str(pki.client_cert),
        "--etcd-key", str(missing),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"navigator weight: --etcd-key {missing}: cannot read it: No such file or directory"
    )
