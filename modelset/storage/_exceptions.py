"""The errors of the storage seam, one tree so callers catch broadly and recover narrowly.

```
StorageError
├── NotFound                 no object at that key
├── AlreadyExists            create-if-absent found the key taken
├── PreconditionFailed       compare-and-swap: the object changed since its ETag was read
├── StoreUnavailable         the store could not be reached or refused the credentials
└── UnsupportedLocation      not a folder or an s3://, gs://, az:// location (exit 2)
    └── ConditionalWritesIgnored
                             the store accepted a write it should have refused (exit 2)
```

Messages name the location and key, never credentials: obstore's own messages are
trimmed to their first line, which carries no signed query.
"""

from __future__ import annotations

from modelset._exceptions import UsageError


class StorageError(Exception):
    """Base of every error the storage seam raises."""


class NotFound(StorageError):
    """No object at that key."""


class AlreadyExists(StorageError):
    """A create-if-absent found the key taken."""


class PreconditionFailed(StorageError):
    """A compare-and-swap found the object changed (or gone) since its ETag was read."""


class StoreUnavailable(StorageError):
    """The store could not be reached, or it refused the credentials.

    ``transient`` tells a failure worth retrying (a throttle, a 5xx, a dropped
    connection, a timeout) from one that will not change (refused credentials)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class UnsupportedLocation(StorageError, UsageError):
    """An output location this project cannot write (a usage error: nothing is paid)."""


class ConditionalWritesIgnored(UnsupportedLocation):
    """The store ignores conditional writes, so exactly-once cannot hold there."""
