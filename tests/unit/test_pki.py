"""The lab's certificate authority: what it writes, and what the certificates say."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator import auth
from navigator import pki
from navigator.lab import procs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_one_file_pair_per_user_with_private_keys(tmp_path: Path) -> None:
    creds = procs.make_etcd_credentials(tmp_path / "pki")
    assert set(creds.clients) == set(auth.USERS)
    assert creds.root.user == auth.ROOT
    assert _mode(creds.ca) == 0o644
    assert not list(creds.directory.glob("ca.key")), "the CA's key is not kept"
    pairs: list[procs.ClientCredentials | procs.ServerTls] = [*creds.clients.values()]
    for pair in [*pairs, creds.server]:
        assert _mode(pair.cert) == 0o644
        assert _mode(pair.key) == 0o600
        assert pair.ca == creds.ca
    for user, files in creds.clients.items():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        assert pki.Issued(cert, _key(files.key)).name == user
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        ca = x509.load_pem_x509_certificate(creds.ca.read_bytes())
        cert.verify_directly_issued_by(ca)
        # NOTE: what Etcd does with it: parsed, and the key matched to the certificate.
        assert files.tls().cert == files.cert.read_bytes()
    assert creds.root.flags() == [
        "--etcd-ca", str(creds.ca),
        "--etcd-cert", str(creds.root.cert),
        "--etcd-key", str(creds.root.key),
    ]  # fmt: skip
    assert creds.root.env()["NAVIGATOR_ETCD_KEY"] == str(creds.root.key)


def test_a_key_file_is_private_even_when_it_existed(tmp_path: Path) -> None:
    key = tmp_path / "old.key"
    key.write_text("old")
    key.chmod(0o666)
    issued = pki.issue_client(pki.new_ca(), user="someone")
    _, written = pki.write_pair(issued, tmp_path, "old")
    assert written == key
    assert _mode(key) == 0o600
    assert key.read_bytes() == issued.key_pem()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("address", "san"),
    [
        pytest.param("127.0.0.1", ipaddress.ip_address("127.0.0.1"), id="ip"),
        pytest.param("https://10.1.2.3:2379", ipaddress.ip_address("10.1.2.3"), id="url"),
        pytest.param("10.1.2.3:2379", ipaddress.ip_address("10.1.2.3"), id="host-port"),
        pytest.param("[::1]:2379", ipaddress.ip_address("::1"), id="ipv6-host-port"),
        pytest.param("::1", ipaddress.ip_address("::1"), id="ipv6"),
        pytest.param("etcd-0.etcd.navigator:2379", "etcd-0.etcd.navigator", id="dns-name"),
    ],
)
def test_server_certificate_names_the_members_hosts(
    tmp_path: Path, address: str, san: ipaddress.IPv4Address | ipaddress.IPv6Address | str
) -> None:
    creds = procs.make_etcd_credentials(tmp_path, hosts=[address], users=[])
    cert = x509.load_pem_x509_certificate(creds.server.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    got = names.get_values_for_type(x509.IPAddress) + names.get_values_for_type(x509.DNSName)
    assert got == [san]
    # NOTE: etcd's member certificate must load as a server's, with its key.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        creds.server.cert, creds.server.key
    )


@pytest.mark.parametrize(
    ("hosts", "error"),
    [
        pytest.param([], "at least one host", id="none"),
        pytest.param(["a/b"], "not a host name", id="slash"),
        pytest.param([""], "not a host name", id="empty"),
    ],
)
def test_unusable_hosts_are_a_value_error(hosts: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        pki.issue_server(pki.new_ca(), name="etcd", hosts=hosts)


def test_a_certificate_does_not_outlive_its_ca() -> None:
    ca = pki.new_ca(days=1)
    issued = pki.issue_client(ca, user="u", days=365)
    assert issued.cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    assert "PRIVATE" not in repr(issued) and "key=" not in repr(issued)


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
