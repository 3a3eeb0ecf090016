"""What the project's two HTTP servers (the sandbox, the callback receiver) share."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class QuietH11(H11Protocol):
    """HTTP/1.1 without uvicorn's access log, whatever handlers ``uvicorn.access`` has.

    uvicorn turns the access log on whenever that logger has a handler (pytest's capture
    adds one), and its lines show paths and query strings: the callback secret, for one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False
