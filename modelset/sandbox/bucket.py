"""A misbehaving S3: a reverse proxy on 127.0.0.1 in front of a real S3-compatible server
(moto's, in the tests and benchmarks) that injects the faults a bucket shows under load.

```python
proxy = BucketProxy("http://127.0.0.1:5000", BucketFaults(slowdown=0.1), seed=7).start()
os.environ["AWS_ENDPOINT_URL"] = proxy.url   # every store now goes through it
proxy.outage(20)                             # unreachable for 20 s from now
proxy.counts                                 # requests by kind, faults by kind
```

Each request draws its fault from a hash of (seed, method, path, how many times that
method and path were asked before), so a run is reproducible under a seed however its
requests interleave. The faults, in the order they are drawn:

- ``reset_before``: the connection is reset before the request is forwarded (it never
  reached the store);
- ``slowdown``: ``503 SlowDown``, every other one with ``Retry-After: 1``;
- ``internal``: ``500 InternalError``;
- ``stall``: no answer for ``stall_s`` seconds (past the client's timeout), then a reset;
- ``reset_after``: the request is forwarded (a write lands in the store), then the
  connection is reset before the answer: the client cannot know it succeeded;
- ``lost_answer``: like ``reset_after`` but answered ``500 InternalError`` instead;
- ``denied``: ``403 AccessDenied``, as for credentials the bucket refuses.

``latency_ms`` is added to every request; ``drop_conditions`` forwards conditional
writes without ``If-None-Match``/``If-Match``, like a careless S3-compatible gateway.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field

CONDITIONS = frozenset({"if-none-match", "if-match"})
# Per-connection headers (RFC 9110 section 7.6.1): each hop sets its own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message></Error>"
)


class BucketFaults(BaseModel):
    """Probability (0..1) of each fault, per request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reset_before: float = Field(default=0.0, ge=0.0, le=1.0)
    slowdown: float = Field(default=0.0, ge=0.0, le=1.0)
    internal: float = Field(default=0.0, ge=0.0, le=1.0)
    stall: float = Field(default=0.0, ge=0.0, le=1.0)
    reset_after: float = Field(default=0.0, ge=0.0, le=1.0)
    lost_answer: float = Field(default=0.0, ge=0.0, le=1.0)
    denied: float = Field(default=0.0, ge=0.0, le=1.0)


def request_kind(method: str, path: str, headers: Any) -> str:
    """What an S3 request does, as the benchmarks count it: ``GET``, ``HEAD``, ``PUT``,
    ``PUT if-none-match``, ``PUT if-match``, ``LIST``, ``DELETE``, ``POST``."""
    query = parse_qs(urlsplit(path).query)
    if method == "GET" and ("list-type" in query or urlsplit(path).path.count("/") <= 1):
        return "LIST"
    if method == "PUT":
        for condition in ("if-none-match", "if-match"):
            if headers.get(condition):
                return f"PUT {condition}"
    return method


class BucketProxy(ThreadingHTTPServer):
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream`` (``http://``)."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        upstream: str,
        faults: BucketFaults | None = None,
        *,
        seed: int = 0,
        latency_ms: float = 0.0,
        stall_s: float = 35.0,
        drop_conditions: bool = False,
        port: int = 0,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.faults = faults or BucketFaults()
        self.seed = seed
        self.latency_ms = latency_ms
        self.stall_s = stall_s
        self.drop_conditions = drop_conditions
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """``requests``, each request kind, each fault injected, ``dropped`` conditions."""
        self.answered: list[tuple[str, str, int]] = []
        """(method, path, status) of every request forwarded to the store, in order."""
        self._seen: Counter[tuple[str, str]] = Counter()
        self._queued: list[str] = []
        self._down_until = 0.0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> BucketProxy:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def outage(self, seconds: float) -> None:
        """Reset every connection at once for ``seconds`` from now: unreachable (0 ends
        an outage)."""
        with self.lock:
            self._down_until = time.monotonic() + seconds

    def fail_next(self, *faults: str) -> None:
        """Give the next requests these faults, in order, before any drawn ones."""
        unknown = set(faults) - set(BucketFaults.model_fields)
        if unknown:
            raise ValueError(f"unknown bucket faults: {sorted(unknown)}")
        with self.lock:
            self._queued.extend(faults)

    def set_faults(self, faults: BucketFaults) -> None:
        with self.lock:
            self.faults = faults

    def count(self, *names: str) -> None:
        with self.lock:
            self.counts.update(names)

    def draw(self, method: str, path: str) -> str | None:
        """The fault of this request, if any (deterministic under the seed)."""
        with self.lock:
            if time.monotonic() < self._down_until:
                return "outage"
            if self._queued:
                return self._queued.pop(0)
            occurrence = self._seen[(method, path)]
            self._seen[(method, path)] += 1
            faults = self.faults
        digest = hashlib.blake2b(
            f"{self.seed}|{method}|{path}|{occurrence}".encode(), digest_size=8
        ).digest()
        roll = struct.unpack(">Q", digest)[0] / 2**64
        for name, rate in faults.model_dump().items():
            if roll < rate:
                return str(name)
            roll -= rate
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BucketProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def _handle(self) -> None:
        proxy = self.server
        body = self._request_body()
        proxy.count("requests", request_kind(self.command, self.path, self.headers))
        if proxy.latency_ms:
            time.sleep(proxy.latency_ms / 1000)
        fault = proxy.draw(self.command, self.path)
        if fault is not None:
            proxy.count(fault)
        if fault in ("outage", "reset_before"):
            return self._reset()
        if fault == "slowdown":
            retry_after = proxy.counts["slowdown"] % 2 == 0
            return self._error(503, "SlowDown", "Please reduce your request rate.", retry_after)
        if fault == "internal":
            return self._error(500, "InternalError", "We encountered an internal error.")
        if fault == "denied":
            return self._error(403, "AccessDenied", "Access Denied")
        if fault == "stall":
            time.sleep(proxy.stall_s)
            return self._reset()
        status, reason, headers, data = self._forward(body)
        with proxy.lock:
            proxy.answered.append((self.command, self.path, status))
        if fault == "reset_after":
            return self._reset()
        if fault == "lost_answer":
            return self._error(500, "InternalError", "We encountered an internal error.")
        self.send_response(status, reason)
        no_body = self.command == "HEAD" or status in (204, 304)
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or (lower == "content-length" and not no_body):
                continue
            self.send_header(name, value)
        if not no_body:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not no_body:
            self.wfile.write(data)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in CONDITIONS and self.server.drop_conditions:
                self.server.count("dropped")
                continue
            if lower in HOP_BY_HOP or lower == "content-length":
                continue
            headers[name] = value
        if body or self.command in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(
            self.server.upstream_host, self.server.upstream_port, timeout=60
        )
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            upstream.close()

    def _error(self, status: int, code: str, message: str, retry_after: bool = False) -> None:
        data = ERROR_BODY.format(code=code, message=message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        if retry_after:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        """Close with a TCP RST, as a load balancer that drops the connection."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _request_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


def main(argv: list[str] | None = None) -> None:
    """``python -m modelset.sandbox.bucket --upstream URL --port P [--latency-ms MS]``: the
    proxy in a process of its own (the benchmarks' bucket latency), until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modelset.sandbox.bucket")
    parser.add_argument("--upstream", required=True, help="the S3 server, http://host:port")
    parser.add_argument("--port", type=int, default=0, help="where to listen on 127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    args = parser.parse_args(argv)
    proxy = BucketProxy(args.upstream, latency_ms=args.latency_ms, port=args.port)
    print(f"bucket proxy on {proxy.url} -> {args.upstream}", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.server_close()


if __name__ == "__main__":
    main()
