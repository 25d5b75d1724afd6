"""A throwaway CA with server and client certificates, for TLS / mutual-TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool = False, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    """ca, server and client (signed by ca), and a rogue client signed by another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        path = directory / name
        path.write_bytes(data)
        out[name.replace(".pem", "")] = path

    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("splitserve test CA", ca_key, None, None, ca=True)
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, None, ca=True)
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name, issuer, issuer_key, server in (
        ("server", ca, ca_key, True),
        ("client", ca, ca_key, False),
        ("rogue", rogue_ca, rogue_ca_key, False),
    ):
        key = _key()
        cert = _cert(name, key, issuer.subject, issuer_key, server=server)
        write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{name}-key.pem", _pem_key(key))
    return out
