"""HTTPS for a phone on the same network: a small local certificate authority and a server certificate.

A browser gives a page the microphone only in a secure context: ``https://`` or ``http://localhost``. A phone
reaching this machine by its LAN address therefore needs HTTPS. :func:`ensure_local_tls` makes, on first use and
under ``$EDGEKWS_HOME/tls/``:

``ca.pem`` / ``ca.key``         a certificate authority of this machine (ECDSA P-256, 10 years; key mode 0600). Installing
                                ``ca.pem`` on a phone makes it trust the server certificate (and lets the page's
                                service worker run, which browsers refuse on certificate errors).
``server.pem`` / ``server.key``  the server certificate it signs (397 days) for ``localhost``, this host's names and
                                every address given plus this machine's LAN addresses. It is made again when one of
                                them is missing from it or it expires within 30 days; the CA stays, so a phone that
                                trusts it keeps trusting the new certificate.

Only the ``cryptography`` package is used. Everything the CA signs is trusted by a phone that installed it: keep
``ca.key`` private and remove the CA from the phone when the demo is over.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from edgekws.fileio import atomic_open, atomic_write_bytes

__all__ = ["TlsFiles", "ensure_local_tls", "lan_addresses", "tls_dir"]

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # server certificate chain (server, then CA), PEM
    key: Path  # server private key, PEM
    ca: Path  # the CA certificate to install on a phone, PEM
    ca_sha256: str  # fingerprint of ca.pem, to compare on the phone
    names: tuple[str, ...]  # DNS names and addresses the server certificate covers
    created: bool  # a new server certificate was made


def tls_dir() -> Path:
    from edgekws.bundle import edgekws_home

    return edgekws_home() / "tls"


def lan_addresses() -> list[str]:
    """This machine's non-loopback IP addresses (best effort, no traffic is sent)."""
    found: set[str] = set()
    for family, probe in ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "fd00::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 1))  # UDP connect only picks the outgoing interface
                found.add(s.getsockname()[0])
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    out = []
    for a in sorted(found):
        try:
            ip = ipaddress.ip_address(a.split("%")[0])
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            out.append(str(ip))
    return out


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with atomic_open(path, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)


def _load_or_make_ca(d: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = d / "ca.pem", d / "ca.key"
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=RENEW_DAYS):
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgekws local CA ({socket.gethostname()})"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekws demo")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _covered(cert, dns: set[str], ips: set[str]) -> bool:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ip = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return dns <= have_dns and ips <= have_ip


def ensure_local_tls(hosts: tuple[str, ...] | list[str] = (), directory: str | os.PathLike | None = None) -> TlsFiles:
    """The CA and a server certificate covering ``localhost``, this host's name, ``hosts`` and the LAN addresses,
    made or renewed as needed (see the module docstring)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory) if directory is not None else tls_dir()
    d.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_make_ca(d)
    dns, ips = {"localhost", socket.gethostname()}, {"127.0.0.1", "::1"}
    for h in [*hosts, *lan_addresses()]:
        if h in ("", "0.0.0.0", "::"):
            continue
        try:
            ips.add(str(ipaddress.ip_address(h)))
        except ValueError:
            dns.add(h)
    cert_path, key_path = d / "server.pem", d / "server.key"
    created = False
    cert = None
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        fresh = cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=RENEW_DAYS)
        if not (fresh and _covered(cert, dns, ips) and cert.issuer == ca_cert.subject):
            cert = None
    if cert is None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        san = [x509.DNSName(n) for n in sorted(dns)] + [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_key(key_path, key)
        atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM)
                           + ca_cert.public_bytes(serialization.Encoding.PEM))
        created = True
    fingerprint = hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return TlsFiles(cert=cert_path, key=key_path, ca=d / "ca.pem", ca_sha256=fingerprint,
                    names=tuple(sorted(dns)) + tuple(sorted(ips)), created=created)
