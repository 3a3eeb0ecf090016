"""The usage error's old address, kept while ``modelset.flows.generate`` imports it here.

It lives in :mod:`modelset._exceptions` (``from modelset import UsageError``).
"""

from modelset._exceptions import UsageError

__all__ = ["UsageError"]
