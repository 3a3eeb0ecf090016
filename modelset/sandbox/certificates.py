"""A throwaway signing identity for C2PA, as the sandbox stands in for the service: a CA
and a signing certificate it issued (the c2pa SDK refuses a self-signed one), for the
tests and the bench. Never for images anyone publishes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SIGNER_DAYS = 45
CA_DAYS = 60


def throwaway_signing_key(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a signing certificate it issued, written into ``folder``: (chain, key, CA
    certificate) as PEM files. The signing certificate lasts ``SIGNER_DAYS`` days."""
    ca_key, signer_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = _name("modelset test CA")
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, days=CA_DAYS, ca=True)
    signer = _certificate(
        _name("modelset test signer"),
        ca_name,
        signer_key.public_key(),
        ca_key,
        days=SIGNER_DAYS,
        ca=False,
    )
    pem = serialization.Encoding.PEM
    chain, key, anchor = folder / "chain.pem", folder / "key.pem", folder / "ca.pem"
    chain.write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
    key.write_bytes(
        signer_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    anchor.write_bytes(ca.public_bytes(pem))
    return chain, key, anchor


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelset tests"),
        ]
    )


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    days: int,
    ca: bool,
) -> x509.Certificate:
    """A CA certificate, or a signing one with the extensions C2PA asks of it."""
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())
