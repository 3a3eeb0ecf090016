"""Settings: one class, environment prefix ``HIDREAM_``, ``.env`` supported.

The API token is a :class:`~pydantic.SecretStr`: it prints as ``**********`` in every
repr, log line and exception. It can also live in a Prefect Secret block whose name is
``HIDREAM_API_TOKEN_BLOCK``; the Prefect layer resolves that (this module stays free of
Prefect so the core can be used and tested without a server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Re-exported: modelset.tasks.runtime imports it from here.
from modelset._exceptions import MissingTokenError

PUBLIC_BASE_URL = "https://www.hidreamai.com"
CALLBACK_PATH = "/hidream/callback/"
OUT_PARAMETER = "out"  # the notify_url's query parameter naming the output location
REQUEST_ID_PARAMETER = "request_id"  # ... and the one naming the send it is the callback of


class Settings(BaseSettings):
    """Everything modelset reads from the environment (``HIDREAM_*``) or ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="HIDREAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    api_token: SecretStr | None = Field(default=None, description="HiDream API token.")
    api_token_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the token."
    )
    base_url: str = Field(default=PUBLIC_BASE_URL, description="HiDream API base URL.")
    api_user_id: str | None = Field(default=None, description="Optional API-User-ID header.")
    language: Literal["en", "zh"] | None = Field(
        default=None, description="Optional X-accept-language header."
    )

    output_dir: str = Field(
        default="output",
        description="Default output location: a folder, or s3://, gs://, az://bucket/prefix.",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Photos in flight at once.")
    max_images: int | None = Field(
        default=None, ge=0, description="Cap on generated images a run may pay for."
    )
    budget_images: int | None = Field(
        default=None,
        ge=0,
        description="Images every run sharing the output location may pay for together, per "
        "budget period (HIDREAM_BUDGET_PERIOD); none: no budget across runs.",
    )
    budget_period: Literal["day", "month"] = Field(
        default="day", description="The period HIDREAM_BUDGET_IMAGES holds for."
    )
    budget_timezone: str = Field(
        default="UTC",
        description="The time zone whose midnight starts a budget period (e.g. Asia/Shanghai).",
    )
    images_per_set: int = Field(
        default=4, ge=1, description="Images a set is assumed to have until the API says."
    )
    confirm_threshold: int = Field(
        default=100, ge=0, description="Interactive runs above this many images ask first."
    )

    callback_url: str | None = Field(
        default=None, description="Public base URL of the callback receiver."
    )
    callback_secret: SecretStr | None = Field(
        default=None, description="Secret path segment that callbacks must carry."
    )

    allow_private_urls: bool = Field(
        default=False, description="Allow input URLs on loopback/private addresses."
    )
    allow_file_urls: bool = Field(default=False, description="Allow file:// rows in manifests.")
    max_fetch_bytes: int = Field(default=30 * 1024 * 1024, ge=1, description="Input size cap.")

    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(default=60.0, gt=0, description="Seconds to wait for an answer.")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per API call.")
    max_retry_after: float = Field(
        default=60.0, ge=0, description="Cap on a honoured Retry-After, in seconds."
    )
    submit_timeout: float = Field(
        default=180.0,
        gt=0,
        description="Seconds a submit waits for its answer (upload included): longer than "
        "the service may take to accept a 2K photo, since an answer cut short is lost.",
    )
    lookup_by_request_id: bool = Field(
        default=True,
        description="Resolve a submit whose answer was lost by looking its request_id up, "
        "only once a lookup has been proven to find an accepted task at this base URL "
        "(the proof is taken by the first run and kept in the output location); false: "
        "never look up, every lost answer stays outcome_unknown.",
    )
    poll_interval: float = Field(default=1.0, gt=0, description="First poll delay, seconds.")
    poll_max_interval: float = Field(default=15.0, gt=0, description="Longest poll delay.")
    poll_deadline: float = Field(
        default=1800.0, gt=0, description="Seconds to wait for a set before giving up."
    )
    ledger_lease: float = Field(
        default=20 * 60.0,
        gt=0,
        description="Seconds a claim on a bucket's ledger holds without renewal (renewed "
        "every third of it); must outlast a whole send.",
    )
    store_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one request to a bucket may take."
    )
    store_max_attempts: int = Field(
        default=30,
        ge=1,
        description="Attempts per bucket request that fails transiently (the retry "
        "budget is what usually ends the retries).",
    )
    store_retry_budget: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a bucket request may spend in all, retries and backoff "
        "included, before the run is told the bucket is unavailable.",
    )
    review_timeout: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="Seconds a deployment run waits suspended for review decisions; "
        "after it Prefect fails the run and its sets stay pending.",
    )
    concurrency_limit: str | None = Field(
        default=None,
        description="Name of a Prefect global concurrency limit that API calls take a slot of.",
    )

    aigc_producer: str | None = Field(
        default=None,
        description="ContentProducer of the TC260 AIGC label written into every stored image "
        "(printable ASCII; default: the upstream's host, from HIDREAM_BASE_URL).",
    )
    aigc_propagator: str | None = Field(
        default=None,
        description="ContentPropagator of the AIGC label: the shop's name or code (printable "
        "ASCII); with it, PropagateID is the manifest row's request_id. Unset: both stay "
        "empty for the platform that spreads the image to fill.",
    )
    c2pa_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain (signing certificate first) to sign a C2PA "
        "manifest into every stored image with; needs HIDREAM_C2PA_KEY.",
    )
    c2pa_cert_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding that chain."
    )
    c2pa_key: Path | None = Field(
        default=None, description="Path of the PEM private key of HIDREAM_C2PA_CERT."
    )
    c2pa_key_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding that key."
    )
    c2pa_tsa_url: str | None = Field(
        default=None,
        description="Timestamp authority for the C2PA signatures; unset: signing stays offline.",
    )
    label_font: Path | None = Field(
        default=None,
        description="Font file for visible labels (default: one fontconfig finds that "
        "draws every character of the text).",
    )

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {zone!r} (an IANA name, e.g. Europe/Berlin)"
            ) from None
        return zone

    @field_validator("aigc_producer", "aigc_propagator")
    @classmethod
    def _printable_ascii(cls, value: str | None) -> str | None:
        if value is not None and not all(" " <= character <= "~" for character in value):
            raise ValueError("must be printable ASCII: the TC260 AIGC label allows no other")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_send(self) -> Settings:
        if self.ledger_lease <= self.send_window():
            raise ValueError(
                f"HIDREAM_LEDGER_LEASE ({self.ledger_lease:g} s) must be longer than a whole "
                f"send ({self.send_window():g} s: (connect + read timeout) x attempts)"
            )
        return self

    def send_window(self) -> float:
        """The longest a submit can take, every attempt included."""
        return (self.connect_timeout + self.submit_timeout) * self.max_attempts

    def notify_url(self, location: str | None = None) -> str | None:
        """Where the service should call back: the receiver's URL with the secret path."""
        if not self.callback_url or self.callback_secret is None:
            return None
        secret = self.callback_secret.get_secret_value()
        if not secret:
            return None
        url = f"{self.callback_url.rstrip('/')}{CALLBACK_PATH}{quote(secret, safe='')}"
        return url if location is None else f"{url}?{urlencode({OUT_PARAMETER: location})}"

    def producer(self) -> str:
        """The AIGC label's ContentProducer: HIDREAM_AIGC_PRODUCER, else the upstream's host."""
        return self.aigc_producer or urlsplit(self.base_url).hostname or self.base_url

    def require_token(self) -> SecretStr:
        """The configured token, or a :class:`MissingTokenError` naming the variable."""
        if self.api_token is None or not self.api_token.get_secret_value():
            raise MissingTokenError()
        return self.api_token


def naming_request(notify_url: str | None, request_id: str) -> str | None:
    """A send's own notify_url: the receiver's, naming the request_id it was sent with, so
    that its callback finds the send even when the answer to the send was lost (the
    documented callback body names only the task)."""
    if notify_url is None:
        return None
    joiner = "&" if "?" in notify_url else "?"
    return f"{notify_url}{joiner}{urlencode({REQUEST_ID_PARAMETER: request_id})}"
