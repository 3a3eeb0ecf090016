"""SSRF guard: only fetch http(s) URLs whose host resolves exclusively to public addresses.

Photos come from manifests that other people write, so a row such as
``http://169.254.169.254/latest/meta-data/`` or a redirect to ``http://10.0.0.5/admin`` must
not make the pipeline talk to the machine's own network.

Two layers:

* ``check_url`` runs before the first request and before every redirect hop. It resolves the
  host and refuses the URL unless every resolved address is public. It works with any
  ``httpx.Client``, including one the caller passes in.
* ``guarded_transport`` builds the transport ``fetch`` uses when it creates its own client.
  It resolves and checks again at connect time and then connects to the address it checked.
  Without this, ``check_url`` followed by httpx's own connect would resolve twice, and a DNS
  server that answers "public" first and "127.0.0.1" second (DNS rebinding) would win.
  The TLS server name and the Host header still come from the URL, so certificates are
  verified against the real host name.

With a caller-supplied client only the first layer applies, so the DNS-rebinding gap stays
open there.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import httpcore
import httpx

from modelset.sources._exceptions import FetchError, UnsafeURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_ENV = "HIDREAM_ALLOW_PRIVATE_URLS"  # read by modelset.settings, named in refusals

_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted (e.g. ``"a loopback address"``), or None if public."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        problem = address_problem(embedded)
        return None if problem is None else f"{problem} ({embedded} embedded in IPv6)"
    if ip in _METADATA_ADDRESSES:
        return "the cloud metadata address"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((problem for failed, problem in checks if failed), None)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order, without duplicates.

    Raises ``socket.gaierror`` if the name does not resolve.
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def refusal(host: str, addresses: Iterable[IPAddress]) -> str | None:
    """The refusal message if any of ``addresses`` (what ``host`` resolved to) is not public."""
    for ip in addresses:
        problem = address_problem(ip)
        if problem is None:
            continue
        subject = str(ip) if host.strip("[]") == str(ip) else f"{host} resolves to {ip}, which"
        return f"refused: {subject} is {problem} (set {ALLOW_PRIVATE_ENV}=1 to allow)"
    return None


def check_url(url: str | httpx.URL, *, allow_private: bool = False) -> list[IPAddress]:
    """Refuse ``url`` unless it is http(s) and its host resolves only to public addresses.

    Returns the checked addresses (empty when ``allow_private`` skips resolution).
    Raises ``UnsafeURLError`` for a refused URL and ``FetchError`` for one that is malformed
    or whose host does not resolve.
    """
    text = str(url)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchError(text, f"invalid URL: {exc}") from exc
    if parsed.scheme not in _DEFAULT_PORTS:
        scheme = parsed.scheme or "(none)"
        raise UnsafeURLError(text, f"refused: only http(s) URLs may be fetched, not {scheme}")
    host = parsed.host
    if not host:
        raise FetchError(text, "invalid URL: no host")
    if allow_private:
        return []
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(text, f"could not resolve host {host}: {_resolver_message(exc)}") from exc
    if not addresses:
        raise FetchError(text, f"could not resolve host {host}: no addresses")
    reason = refusal(host, addresses)
    if reason is not None:
        raise UnsafeURLError(text, reason)
    return addresses


def _resolver_message(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class GuardedNetworkBackend(httpcore.SyncBackend):
    """Resolve and check at connect time, then connect to the checked address itself."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            message = f"could not resolve host {host}: {_resolver_message(exc)}"
            raise httpcore.ConnectError(message) from exc
        reason = refusal(host, addresses)
        if reason is not None:
            raise UnsafeURLError(f"{host}:{port}", reason)
        last_error: Exception = httpcore.ConnectError(f"no addresses for {host}")
        for ip in addresses:
            try:
                return super().connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error


def guarded_transport() -> httpx.HTTPTransport:
    """An httpx transport whose connections go through ``GuardedNetworkBackend``."""
    transport = httpx.HTTPTransport()
    pool = transport._pool
    # httpx 0.28 has no public parameter for the network backend; the pool is httpcore's
    # public ConnectionPool and fetch's tests fail loudly if this attribute ever moves.
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("this httpx version does not allow a guarded network backend")
    pool._network_backend = GuardedNetworkBackend()
    return transport
