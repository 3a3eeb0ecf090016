"""The errors of the exactly-once ledger: a claim that no longer holds its key.

```
ClaimLost                   the hold was lost (a lease not renewed) or the record changed
└── RecordAppeared          a claim taken as absent found the record written meanwhile
```

Neither means anything was sent twice: every record write is conditional, so a writer
that lost its claim gets one of these instead of overwriting.
"""


class ClaimLost(Exception):
    """The claim's hold was lost (a lease not renewed) or its record changed under it."""


class RecordAppeared(ClaimLost):
    """A claim taken as absent (planned from a listing) found the record written
    meanwhile; the claim now carries it, and nothing was written: decide again."""
