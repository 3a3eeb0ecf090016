"""C2PA: a signed manifest saying how an image came to be, with c2pa-python.

Signing comes last, after the XMP labels: the manifest's hash covers every other byte of
the file, the XMP included. Nothing here reaches the network unless a timestamp authority
is configured (``HIDREAM_C2PA_TSA_URL``); no thumbnail is generated (the manifest stays a
few kilobytes and signing a few milliseconds).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from modelset.labels._exceptions import LabelError, SigningKeyError, UnlabelledFormat
from modelset.labels.xmp import image_mime

INGREDIENT_ID = "ingredient-1"
CLAIM_GENERATOR = {"name": "modelset", "version": "1"}
# Offline: no thumbnails generated, no remote manifest or OCSP fetched when reading.
OFFLINE_SETTINGS: dict[str, Any] = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
}
_EC_ALGORITHMS = {
    "secp256r1": c2pa.C2paSigningAlg.ES256,
    "secp384r1": c2pa.C2paSigningAlg.ES384,
    "secp521r1": c2pa.C2paSigningAlg.ES512,
}


@dataclass(frozen=True)
class SigningKey:
    """A certificate chain (leaf first, PEM) and its private key (PEM)."""

    chain: bytes = field(repr=False)
    key: bytes = field(repr=False)
    tsa_url: str | None = None

    @classmethod
    def load(cls, chain: bytes, key: bytes, tsa_url: str | None = None) -> SigningKey:
        """A key checked to be usable: both parse, and the key is one C2PA signs with."""
        signing = cls(chain, key, tsa_url)
        signing.algorithm()
        signing.expires()
        return signing

    def algorithm(self) -> c2pa.C2paSigningAlg:
        try:
            private = load_pem_private_key(self.key, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(
                f"HIDREAM_C2PA_KEY is not an unencrypted PEM key ({exc})"
            ) from None
        if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name in _EC_ALGORITHMS:
            return _EC_ALGORITHMS[private.curve.name]
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return c2pa.C2paSigningAlg.ED25519
        if isinstance(private, rsa.RSAPrivateKey):
            return c2pa.C2paSigningAlg.PS256
        raise SigningKeyError(
            "HIDREAM_C2PA_KEY: C2PA signs with EC P-256/384/521, Ed25519 or RSA keys"
        )

    def certificate(self) -> x509.Certificate:
        """The signing (leaf) certificate: the chain's first."""
        try:
            return x509.load_pem_x509_certificates(self.chain)[0]
        except (ValueError, IndexError) as exc:
            raise SigningKeyError(
                f"HIDREAM_C2PA_CERT is not a PEM certificate chain ({exc})"
            ) from None

    def expires(self) -> datetime:
        return self.certificate().not_valid_after_utc


@dataclass(frozen=True)
class Ingredient:
    """What an image was made from: its bytes, and how it relates to the image."""

    title: str
    data: bytes = field(repr=False)
    relationship: str  # inputTo (a source photo) or parentOf (the image edited)


@dataclass(frozen=True)
class Provenance:
    """What a manifest says: actions, our own assertions, at most one ingredient."""

    title: str
    actions: list[dict[str, Any]]
    assertions: dict[str, dict[str, Any]]  # label -> data
    ingredient: Ingredient | None = None


def sign(data: bytes, signing: SigningKey, provenance: Provenance) -> bytes:
    """``data`` with a C2PA manifest saying ``provenance``, signed with ``signing``."""
    mime = image_mime(data)
    if mime is None:
        raise UnlabelledFormat(None)
    actions = [dict(action) for action in provenance.actions]
    ingredient = provenance.ingredient
    if ingredient is not None and ingredient.relationship == "parentOf":
        # c2pa.opened names the image it opened
        parameters = {**actions[0].get("parameters", {}), "ingredientIds": [INGREDIENT_ID]}
        actions[0]["parameters"] = parameters
    manifest = {
        "claim_generator_info": [CLAIM_GENERATOR],
        "title": provenance.title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            *({"label": label, "data": body} for label, body in provenance.assertions.items()),
        ],
    }
    info = c2pa.C2paSignerInfo(signing.algorithm(), signing.chain, signing.key, signing.tsa_url)
    signed = io.BytesIO()
    try:
        with (
            c2pa.Context.from_dict(OFFLINE_SETTINGS) as context,
            c2pa.Signer.from_info(info) as signer,
            c2pa.Builder(manifest, context) as builder,
        ):
            if ingredient is not None:
                _add_ingredient(builder, ingredient)
            builder.sign(signer, mime, io.BytesIO(data), signed)
    except c2pa.C2paError as exc:
        raise LabelError(f"could not sign the image ({exc})") from None
    return signed.getvalue()


def _add_ingredient(builder: c2pa.Builder, ingredient: Ingredient) -> None:
    mime = image_mime(ingredient.data)
    if mime is None:
        raise UnlabelledFormat(None)
    builder.add_ingredient(
        json.dumps(
            {
                "title": ingredient.title,
                "relationship": ingredient.relationship,
                "label": INGREDIENT_ID,
            }
        ),
        mime,
        io.BytesIO(ingredient.data),
    )
