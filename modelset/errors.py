"""Errors that mean "the command was asked something it cannot do": exit code 2.

Each layer's own usage errors subclass :class:`UsageError` (a missing token, a source
that does not exist, an unknown template id), so entry points catch one type.
"""


class UsageError(Exception):
    """A usage or configuration error; nothing was paid for."""
