"""The HTML pages modelset writes (a run's ``index.html``, the template gallery), from
the Jinja2 templates in ``modelset/templates/``, escaped by the engine: a value shows as
text unless its template marks it safe."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

_PAGES = Environment(
    loader=PackageLoader("modelset"),  # modelset/templates/
    autoescape=select_autoescape(["html.j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(template: str, **values: Any) -> str:
    """The page ``template`` (a file in ``modelset/templates/``) with ``values``."""
    return _PAGES.get_template(template).render(**values)
