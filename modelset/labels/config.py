"""The labelling the settings ask for: who the labels name and, where a certificate and
key are configured (files, or secrets read by whoever can: under Prefect, Secret blocks),
the key manifests are signed with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modelset.credentials import SecretReader
from modelset.labels._exceptions import SigningKeyError
from modelset.labels.labelling import Labelling
from modelset.settings import Settings


async def labelling_from_settings(settings: Settings, secret: SecretReader) -> Labelling:
    """The labelling of the settings; a :class:`SigningKeyError` when the signing key is
    configured only in part or cannot sign."""
    chain = await _pem(settings.c2pa_cert, settings.c2pa_cert_block, "HIDREAM_C2PA_CERT", secret)
    key = await _pem(settings.c2pa_key, settings.c2pa_key_block, "HIDREAM_C2PA_KEY", secret)
    labelling = Labelling(
        settings.producer(), settings.aigc_propagator or "", label_font=settings.label_font
    )
    if chain is None and key is None:
        return labelling
    if chain is None or key is None:
        missing = "HIDREAM_C2PA_CERT" if chain is None else "HIDREAM_C2PA_KEY"
        raise SigningKeyError(f"C2PA signing needs a certificate and a key: set {missing} too")
    from modelset.labels.signing import SigningKey

    signing = SigningKey.load(chain, key, settings.c2pa_tsa_url)
    return replace(labelling, signing=signing)


async def _pem(
    path: Path | None, block: str | None, setting: str, secret: SecretReader
) -> bytes | None:
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"{setting}: cannot read {path} ({exc.strerror})") from None
    if block:
        return (await secret(block)).get_secret_value().encode()
    return None
