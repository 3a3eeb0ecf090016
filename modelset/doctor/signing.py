"""Check 8: whether the stored images will carry a signed C2PA manifest, and until when
its certificate lasts (every image carries the XMP labels either way)."""

from __future__ import annotations

from datetime import UTC, datetime

from modelset.doctor.result import CheckResult, first_line
from modelset.settings import Settings

EXPIRY_WARNING_DAYS = 30


async def check_signing(settings: Settings) -> CheckResult:
    """The C2PA signing key: none (advice), unusable (a failure: runs refuse it), or its
    certificate's subject and expiry (advice when it ends within a month)."""
    name = "signing"
    configured = [settings.c2pa_cert, settings.c2pa_cert_block]
    configured += [settings.c2pa_key, settings.c2pa_key_block]
    if not any(configured):
        return CheckResult(
            name,
            False,
            "nothing is signed: no C2PA certificate and key (images still carry the XMP labels)",
            hint="set HIDREAM_C2PA_CERT and HIDREAM_C2PA_KEY to sign a C2PA manifest into "
            "every image (docs/labels.md)",
            needed=False,
        )
    from modelset.labels.config import labelling_from_settings
    from modelset.tasks.credentials import read_secret_block

    try:
        signing = (await labelling_from_settings(settings, read_secret_block)).signing
    except Exception as exc:
        return CheckResult(
            name, False, f"cannot sign: {first_line(exc)}", hint="fix the certificate or key"
        )
    assert signing is not None
    certificate = signing.certificate()
    expires = signing.expires()
    left = expires - datetime.now(UTC)
    subject = certificate.subject.rfc4514_string()
    detail = f"signing as {subject}; certificate expires {expires:%Y-%m-%d} ({left.days} days)"
    if left.total_seconds() <= 0:
        return CheckResult(name, False, detail, hint="the certificate has expired: renew it")
    if signing.tsa_url is None:
        detail += "; no timestamp authority (HIDREAM_C2PA_TSA_URL): signatures are offline"
    return CheckResult(
        name,
        left.days > EXPIRY_WARNING_DAYS,
        detail,
        hint="renew the certificate soon",
        needed=False,
    )
