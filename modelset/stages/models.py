"""What the stages pass on: the options of a preparation, a photo on its way through the
stages, and the rules of a submit."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from modelset.images import Fit, Policy


class PrepareOptions(BaseModel):
    policy: Policy = Policy.FIX
    fit: Fit = Fit.CROP
    max_fetch_bytes: int = 30 * 1024 * 1024
    allow_private_urls: bool = False
    timeout: float = 30.0
    pass_urls: bool = False  # send a valid http(s) photo's URL instead of uploading it

    @property
    def name(self) -> str:
        """Names the preparation in the exactly-once key and the cache: what changes pixels."""
        return f"{self.policy.value}-{self.fit.value}"


class PreparedPhoto(BaseModel):
    """A photo on its way through fetch, validate and prepare, or the reason it stopped.

    It holds hashes and keys of the output location, never a path on one machine: the
    stages' results are cached by Prefect in the output location and read back by any
    worker.
    """

    source: str
    source_sha256: str | None = None
    validated: bool = False
    upload_key: str | None = None  # the prepared upload, a key of the output location
    upload_sha256: str | None = None
    thumbnail: str | None = None  # a key of the output location
    reason: str | None = None
    sendable_as_is: bool = False  # the source itself meets every rule of the API
    look: str | None = None  # what the prepared pixels look like (modelset.images.looks)
    # Of copies of one picture, which is the best source: see ``source_rank``.
    upload_pixels: int = 0
    source_bytes_per_pixel: float = 0.0

    @property
    def ready(self) -> bool:
        return self.upload_sha256 is not None and self.reason is None

    @property
    def source_rank(self) -> tuple[int, float]:
        """Higher for a better source of the same picture: more pixels after preparation,
        then fewer of its pixels lost to compression (more bytes a pixel, in any format)."""
        return (self.upload_pixels, self.source_bytes_per_pixel)

    def passes_url(self, options: PrepareOptions) -> bool:
        """Whether the submit sends the source's URL instead of an upload (--pass-urls)."""
        return (
            options.pass_urls
            and self.sendable_as_is
            and self.source.startswith(("http://", "https://"))
            and self.source_sha256 is not None
        )

    def sent_sha256(self, options: PrepareOptions) -> str:
        """The sha256 of what a submit of this photo carries."""
        sent = self.source_sha256 if self.passes_url(options) else self.upload_sha256
        assert sent is not None
        return sent

    def image_to_send(self, options: PrepareOptions, upload: Path | None) -> tuple[str | Path, str]:
        """What the submit carries, and its sha256: the source URL when it may pass."""
        if self.passes_url(options):
            return self.source, self.sent_sha256(options)
        assert upload is not None
        return upload, self.sent_sha256(options)


class SubmitPolicy(BaseModel):
    run_id: str
    refresh: bool = False
    retry_failed: bool = False
    resubmit_unknown: bool = False
    allow_near_duplicates: bool = False  # pay for photos that look like one paid for
    # --regenerate-declined: ledger key -> the declined attempt, paid again once.
    regenerate: dict[str, int] = Field(default_factory=dict)
    # A send (every attempt of it) must fit in what is left of the claim's lease.
    send_window_s: float = 0.0
