"""Template ids against the service's catalogue (core: the CLI checks before Prefect)."""

from __future__ import annotations

import time

from modelset._exceptions import UnknownTemplates

# The catalogue this process fetched last, per upstream: `modelset run` checks its
# template ids before Prefect is imported, and the flow it then runs does not ask again.
_FRESH_S = 300.0
_fetched: dict[str, tuple[float, list[int]]] = {}


def remember(base_url: str, known: list[int]) -> None:
    _fetched[base_url] = (time.monotonic(), known)


def recently_fetched(base_url: str) -> list[int] | None:
    """The catalogue this process fetched from ``base_url`` in the last minutes, if any."""
    fetched = _fetched.get(base_url)
    if fetched is None or time.monotonic() - fetched[0] > _FRESH_S:
        return None
    return fetched[1]


def check_known(template_ids: list[int], known: list[int]) -> None:
    """Raise :class:`UnknownTemplates` for ids the catalogue does not list."""
    unknown = sorted(set(template_ids) - set(known))
    if unknown:
        raise UnknownTemplates(unknown, known)
