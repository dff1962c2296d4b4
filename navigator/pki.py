"""A small certificate authority for the lab and the tests: etcd's server certificates and the
components' client certificates.

etcd started with ``--client-cert-auth`` takes the subject CN of a client's certificate as
its etcd user (``coordinator.auth``), so a component's certificate is its whole credential:
no password to hand out. This module makes that material and nothing more.

NOT for production: EC P-256 keys without a passphrase, a CA whose key stays in memory
unless the caller writes it, no revocation. A real mesh takes its certificates from its
own PKI (cert-manager, Vault...); the commands only read PEM files.

Exceptions: ``ValueError`` for a name or host that cannot go into a certificate, ``OSError``
from writing files.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 365
BACKDATE = datetime.timedelta(hours=1)
"""Certificates start an hour ago: a member whose clock is a little behind still takes them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)
    """NOTE: kept out of ``repr``, so no log line or traceback shows it."""

    @property
    def name(self) -> str:
        """The subject CN (for a client certificate: its etcd user)."""
        found = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(found[0].value) if found else ""

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The key, PKCS#8 and unencrypted (gRPC takes no other)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_ca(name: str = "navigator-lab-ca", *, days: int = DEFAULT_DAYS) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_server(
    ca: Issued, *, name: str, hosts: Iterable[str], days: int = DEFAULT_DAYS
) -> Issued:
    """A server certificate for ``hosts``: IP addresses become IP SANs, names DNS SANs.

    NOTE: it may also act as a client (clientAuth): etcd's own gRPC gateway dials the member
    with the member's certificate when ``--client-cert-auth`` is on.
    """
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or "/" in host or ":" in host:
                raise ValueError(f"not a host name or IP address: {host!r}") from None
            sans.append(x509.DNSName(host))
    if not sans:
        raise ValueError("a server certificate needs at least one host")
    return _issue(
        ca,
        name=name,
        days=days,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=sans,
    )


def issue_client(ca: Issued, *, user: str, days: int = DEFAULT_DAYS) -> Issued:
    """A client certificate whose subject CN is ``user`` (etcd's user with client-cert auth)."""
    return _issue(ca, name=user, days=days, usages=[ExtendedKeyUsageOID.CLIENT_AUTH], sans=[])


def write_cert(issued: Issued, path: Path) -> Path:
    """Writes the certificate alone (a CA's, for the clients that trust it); mode 0644."""
    _write(path, issued.cert_pem(), 0o644)
    return path


def write_pair(issued: Issued, directory: Path, stem: str) -> tuple[Path, Path]:
    """Writes ``<stem>.pem`` (0644) and ``<stem>.key`` (0600) in ``directory``; returns both."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(key, issued.key_pem(), 0o600)
    _write(cert, issued.cert_pem(), 0o644)
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes through a temporary file created with ``mode``: a key is never readable by
    others, not even for a moment, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            # NOTE: O_CREAT's mode is masked by the umask, and ignored for a file that existed.
            os.fchmod(out.fileno(), mode)
            out.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise ValueError(f"a common name has 1 to 64 characters: {common_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    ca: Issued,
    *,
    name: str,
    days: int,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)
