"""modelset: model photos to HiDream model image sets, exactly once, with Prefect.

The errors every layer shares and the exit codes are mapped in :mod:`modelset._exceptions`.
"""

from modelset._exceptions import ExitCode, MissingTokenError, UnknownTemplates, UsageError

__all__ = ["ExitCode", "MissingTokenError", "UnknownTemplates", "UsageError"]
