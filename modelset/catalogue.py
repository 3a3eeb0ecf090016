"""Template ids against the service's catalogue (core: the CLI checks before Prefect)."""

from __future__ import annotations

from modelset.errors import UsageError


class UnknownTemplates(UsageError):
    """Template ids the catalogue does not list: a usage error, nothing is paid."""

    def __init__(self, unknown: list[int], known: list[int]) -> None:
        super().__init__(
            f"unknown template id(s) {', '.join(map(str, unknown))}; the catalogue has "
            f"{', '.join(map(str, known[:30]))}{' ...' if len(known) > 30 else ''} "
            "(modelset templates lists them)"
        )
        self.unknown = unknown


def check_known(template_ids: list[int], known: list[int]) -> None:
    """Raise :class:`UnknownTemplates` for ids the catalogue does not list."""
    unknown = sorted(set(template_ids) - set(known))
    if unknown:
        raise UnknownTemplates(unknown, known)
