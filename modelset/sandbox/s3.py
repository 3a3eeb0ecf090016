"""moto's S3 server with its conditional writes made atomic, as S3's are.

``python -m modelset.sandbox.s3 -H 127.0.0.1 -p PORT`` takes moto's own arguments; the
tests and benchmarks start their S3 server with it (moto is a development dependency).

moto checks ``If-Match`` / ``If-None-Match`` and then writes, with no lock between the
two, and its server answers requests on threads: two compare-and-swaps from the same
ETag can both pass the check and both write, so one update is lost without an error
(the storage contract's concurrent counter ended at 39 of 40 under load). S3 evaluates
the condition and the write as one step, and the ledger's exactly-once rests on that.
Here every object write and delete holds one lock, which makes moto's check-then-write
one step too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_WRITES = threading.Lock()


def _atomic(method: Callable[..., Any]) -> Callable[..., Any]:
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _WRITES:
            return method(self, *args, **kwargs)

    return locked


def main(argv: list[str] | None = None) -> None:
    from moto.s3.responses import S3Response
    from moto.server import main as moto_main

    S3Response.put_object = _atomic(S3Response.put_object)  # type: ignore[method-assign]
    S3Response.delete_object = _atomic(S3Response.delete_object)  # type: ignore[method-assign]
    moto_main(argv)


if __name__ == "__main__":
    main()
