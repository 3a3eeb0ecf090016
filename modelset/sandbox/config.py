"""Settings of the local HiDream sandbox."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelset.sandbox.imagery import ImageFormat


class Faults(BaseModel):
    """Probability (0..1) of each simulated failure, drawn independently per submission."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    throttle: float = Field(default=0.0, ge=0.0, le=1.0)
    """HTTP 429 with Retry-After and envelope code 1009; no task is created."""
    server_error: float = Field(default=0.0, ge=0.0, le=1.0)
    """HTTP 500 with a plain-text body; no task is created."""
    no_credits: float = Field(default=0.0, ge=0.0, le=1.0)
    """Envelope code 2007; no task is created."""
    stall: float = Field(default=0.0, ge=0.0, le=1.0)
    """The task is created but the submit request is never answered."""
    fail: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per sub-task: final status 3 (generation failed)."""
    reject: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per sub-task: final status 4 (rejected by content review)."""
    lost_answer: float = Field(default=0.0, ge=0.0, le=1.0)
    """The task is created, then the answer is lost on its way back: HTTP 502 from a
    proxy's error page, as a gateway in front of the service answers when the service
    behind it is slow or restarts after accepting the request."""
    malformed: float = Field(default=0.0, ge=0.0, le=1.0)
    """HTTP 200 with a body that is not a JSON envelope: per submit (after the task is
    created: a truncated envelope) and per results query (an HTML page or truncated JSON)."""
    unknown_status: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per sub-task: while processing, task_status is the undocumented 7 instead of 2."""
    expire: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per sub-task: the image URLs handed out so far answer 404 on the first download;
    a fresh results query hands out a URL that works."""
    callback_dup: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per task with a notify_url: the callback is delivered twice."""
    callback_early: float = Field(default=0.0, ge=0.0, le=1.0)
    """Per task with a notify_url: the callback (with the final body) is delivered halfway
    through generation, before the task is final."""


def parse_faults(spec: str) -> Faults:
    """Parse ``"throttle=0.1,server_error=0.05"``; an empty string means no faults.

    Raises ValueError naming the offending entry for an unknown key, a duplicate key,
    a missing ``=``, a value that is not a number, or a rate outside 0..1.
    """
    known = list(Faults.model_fields)
    rates: dict[str, float] = {}
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, value = (part.strip() for part in entry.partition("="))
        if not sep:
            raise ValueError(f"fault {entry!r} must look like name=rate, e.g. throttle=0.1")
        if key not in known:
            raise ValueError(f"unknown fault {key!r}; known faults: {', '.join(known)}")
        if key in rates:
            raise ValueError(f"fault {key!r} is given twice")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"fault {key!r}: rate {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault {key!r}: rate {value} is outside 0..1")
        rates[key] = rate
    return Faults.model_validate(rates)


class SandboxConfig(BaseModel):
    """How the sandbox listens and behaves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    """0 picks a free port."""
    token: str = Field(default="sandbox-token", min_length=1, repr=False)
    """The only bearer token accepted."""
    latency_ms: float = Field(default=200.0, ge=0.0)
    """Added to every API call (submit, results, templates)."""
    generation_s: float = Field(default=2.0, ge=0.0)
    """Time from submit until every sub-task is final."""
    images_per_set: int = Field(default=4, ge=1, le=32)
    image_format: ImageFormat = "JPEG"
    """The format of the generated images (their URLs end in ``.jpg`` whatever it is)."""
    upstream_label: str | None = None
    """Generated images carry a TC260 AIGC record already, as an upstream that labels
    its own images would: this ContentProducer, the sub-task id as ProduceID, and the
    IPTC digital source type. None: they carry no label."""
    faults: Faults = Field(default_factory=Faults)
    seed: int | None = None
    """Seed of the fault draws, for reproducible runs."""
    retry_after_s: float = Field(default=1.0, ge=0.0)
    """Sent as Retry-After (whole seconds, at least 1) with HTTP 429."""
    state_dir: Path | None = None
    """Where uploaded photos and rendered images are stored; None means a temporary
    directory removed when the server stops (or ``<state_file>.d`` with a state file)."""
    state_file: Path | None = None
    """JSON file keeping tasks, submissions and callbacks across restarts: written
    atomically on every change, read at start."""
    lookup_by_request_id: bool = False
    """The public docs promise results by ``task_id`` only, so by default a results
    query by request_id alone answers 1003 "task not found", even for a task that exists
    (the least the service could do). True: it finds the task sent with that request_id,
    one reading of the docs that our earlier sandbox chose."""

    @property
    def photo_dir(self) -> Path | None:
        """Where photos live: ``state_dir``, else next to the state file, else temporary."""
        if self.state_dir is not None:
            return self.state_dir
        if self.state_file is not None:
            return self.state_file.with_name(self.state_file.name + ".d")
        return None
