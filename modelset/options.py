"""The typed parameters of a run, shared by the CLI, the flow and the deployments' forms."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LabelPosition = Literal["bottom-right", "bottom-left", "top-right", "top-left", "bottom", "top"]
"""Where a visible label is drawn: a corner, or the middle of the top or bottom edge."""


class RunOptions(BaseModel):
    """How a batch runs. Every field shows as a form input in the Prefect UI."""

    # A misspelt option from the form, the API or prefect.yaml is refused, not dropped.
    model_config = ConfigDict(extra="forbid")

    policy: Literal["fix", "strict"] = Field(
        default="fix",
        description="fix: make every photo sendable (upright, 3:4, <=2048 px, no metadata); "
        "strict: send only photos already valid, reject the rest with reasons.",
    )
    fit: Literal["crop", "pad"] = Field(
        default="crop", description="How fix reaches 3:4: crop (top-biased) or pad with white."
    )
    pass_urls: bool = Field(
        default=False,
        description="Send an http(s) photo that already meets every rule as its URL, "
        "saving the upload (the service fetches it).",
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=256, description="Sets in flight at once (default: settings)."
    )
    refresh: bool = Field(default=False, description="Pay again for everything.")
    retry_failed: bool = Field(
        default=False, description="Resubmit only items whose last outcome was failed."
    )
    resubmit_unknown: bool = Field(
        default=False,
        description="Send again items whose earlier send has an unknown outcome (may pay twice).",
    )
    allow_near_duplicates: bool = Field(
        default=False,
        description="Pay for a photo even when it looks like one already paid for with the "
        "same template (re-encoded, resized, re-saved or slightly cropped); by default it "
        "is skipped as a near-duplicate.",
    )
    dry_run: bool = Field(default=False, description="Prepare and plan; submit nothing.")
    max_images: int | None = Field(
        default=None, ge=0, description="Never pay for more generated images than this."
    )
    out: str | None = Field(
        default=None,
        description="Output location: an absolute folder, or s3://, gs://, az://bucket/prefix "
        "(default: HIDREAM_OUTPUT_DIR).",
    )
    shard_size: int | None = Field(
        default=None,
        ge=1,
        description="Split a larger batch into child runs of this many photos, run by "
        "the generate-model-sets/manual deployment on any worker.",
    )
    shard_of: str | None = Field(
        default=None,
        description="Set by a sharded parent run: its run id, through which its child "
        "runs share the max_images cap and report an account error. Leave empty.",
    )
    review: bool = Field(
        default=False,
        description="Hold the generated sets for a person's decision before publishing: a "
        "deployment run waits (suspended, holding no worker) for the decision from its "
        "Resume form; elsewhere the sets stay pending for `modelset review OUT`.",
    )
    publish_to: str | None = Field(
        default=None,
        description="Where approved sets are published: a folder or bucket prefix "
        "(default: OUT/published).",
    )
    regenerate_declined: bool = Field(
        default=False,
        description="Pay a new attempt for exactly the sets declined in review.",
    )
    visible_label: str | None = Field(
        default=None,
        description="Text drawn on every published copy (not on the stored outputs) saying "
        "it is AI-generated, e.g. 'AI生成' or 'AI-generated', at least 5% of the short side "
        "high (GB 45438-2025, 5.2).",
    )
    visible_label_position: LabelPosition = Field(
        default="bottom-right", description="The corner or edge the visible label is at."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Seconds to wait for a set (default: settings)."
    )
