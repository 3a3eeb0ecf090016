"""Every error modelset raises on purpose, and the exit code it ends a command with.

Each layer keeps its own tree in its package's ``_exceptions.py``, re-exported from the
package root (``from modelset.hidream import AccountError``), so callers catch broadly and
recover narrowly. The project-wide errors are here, re-exported from ``modelset``. The
roots, and where each tree is drawn in full:

```
UsageError                      the command was asked something it cannot do: nothing paid
├── MissingTokenError           no API token is configured
├── UnknownTemplates            template ids the catalogue does not list
├── SourceError                 modelset.sources: what the user pointed at is unusable
├── UnsupportedLocation         modelset.storage (a StorageError too): no usable output
├── SigningKeyError             modelset.labels: the C2PA certificate and key cannot sign
└── NoFontCovers                modelset.labels: no font draws a visible label's text
HiDreamError                    modelset.hidream: the service failed, or refused a call
└── AccountError                ... refused the account: token rejected, no credits
StorageError                    modelset.storage: the output location failed
FetchError                      modelset.sources: one source could not be fetched
ImageRejected                   modelset.images: one photo's content cannot be used
LabelError                      modelset.labels: one image could not be labelled or signed
ClaimLost                       modelset.ledger: a claim's hold on its key was lost
EmitFailed                      modelset.deployments: Prefect did not take an event
ApiError, PhotoError            modelset.sandbox: what the sandbox answers its clients
```

The exit code (:class:`ExitCode`) a command ends with when one reaches it, the same for
every command:

```
UsageError, of any layer                    2  USAGE
AccountError                                3  ACCOUNT
any other HiDreamError, StorageError,       1  ITEMS_FAILED: nothing paid for is lost, the
the Prefect server not answering               same command again finishes the work
FetchError, ImageRejected                   -  only that photo's row fails; the run goes on
LabelError                                  -  only that image fails; its set stays open and
                                               a rerun downloads and labels it again
ClaimLost                                   -  the send is decided again (its task retries)
EmitFailed                                  -  the callback's next delivery tries again
ApiError, PhotoError                        -  answered over HTTP, never raised to a client
```

A run ends with 1 when some of its rows did not succeed, 3 when the service refused the
account on the way. ``modelset doctor`` ends with 3 when the service refused the account,
2 when a check the configured mode needs failed (a configuration error), 0 otherwise.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How a command ends: the codes of the table above, for the CLI and the doctor."""

    OK = 0
    ITEMS_FAILED = 1
    """Some items did not succeed, or the command stopped on a failure worth a rerun."""
    USAGE = 2
    """A usage or configuration error: nothing was paid for."""
    ACCOUNT = 3
    """The service refused the account (token rejected, no credits)."""


class UsageError(Exception):
    """A usage or configuration error; nothing was paid for.

    Each layer's own usage errors subclass it (a missing token, a source that does not
    exist, an unknown template id), so entry points catch one type."""


class MissingTokenError(UsageError):
    """No API token is configured for a host that needs one."""

    def __init__(self) -> None:
        super().__init__(
            "no HiDream API token: set HIDREAM_API_TOKEN (or HIDREAM_API_TOKEN_BLOCK, "
            "the name of a Prefect Secret block holding it)"
        )


class UnknownTemplates(UsageError):
    """Template ids the catalogue does not list: a usage error, nothing is paid."""

    def __init__(self, unknown: list[int], known: list[int]) -> None:
        super().__init__(
            f"unknown template id(s) {', '.join(map(str, unknown))}; the catalogue has "
            f"{', '.join(map(str, known[:30]))}{' ...' if len(known) > 30 else ''} "
            "(modelset templates lists them)"
        )
        self.unknown = unknown
