"""The errors of discovering and fetching input photos, one tree per consequence.

```
UsageError (modelset)
└── SourceError             what the user pointed at is unusable: the whole run stops (exit 2)
    └── NoImagesFound       a folder, glob or prefix that exists but holds no image
FetchError                  one source could not be fetched: only that photo fails
└── UnsafeURLError          the URL (or a redirect hop) points at an address refused
```

Messages carry sources redacted (:func:`~modelset.sources.urls.redact_url`): no userinfo,
no query string.
"""

from __future__ import annotations

from modelset._exceptions import UsageError
from modelset.sources.urls import redact_url


class SourceError(UsageError):
    """A usage problem with what the user pointed at; the whole run should stop."""


class NoImagesFound(SourceError):
    """A folder, glob or prefix that exists but holds no image (an empty inbox)."""


class FetchError(Exception):
    """One source could not be fetched; only that photo fails.

    ``source`` is the redacted source (no userinfo, no query string) and ``reason`` a short
    human-readable cause such as ``"HTTP 404 Not Found"``.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = redact_url(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self) -> tuple[type[FetchError], tuple[str, str]]:
        # Keep the two-argument constructor working through pickle (worker threads/processes).
        return (type(self), (self.source, self.reason))


class UnsafeURLError(FetchError):
    """The URL (or a redirect hop) points at an address we refuse to contact."""
