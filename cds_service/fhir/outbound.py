"""Every HTTP call the service makes (FHIR reads, JWKS fetches): which URLs, how long, how much.

- `within(url, base)` is the one test of "is this URL on that server": the same scheme, host
  and port, and a path at or under the base's path, segment by segment, judged after
  percent-decoding; a dot segment in any spelling, a `;` parameter or an empty segment makes the
  URL refused. It is used for the `fhirServer` against the allowlist, for redirects and for
  `next` links.
- `Outbound.get` sends a GET that never follows redirects (the caller checks each one), stops
  at a deadline that holds for the whole exchange, and refuses an answer beyond a number of
  decoded bytes. Socket timeouts bound each read, not their sum, so a server sending a byte a
  second would never trip them: a watchdog shuts down the socket of any request still in
  flight at its deadline, which frees the thread waiting on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

DEFAULT_PORTS = {"http": 80, "https": 443}
READ_CHUNK_BYTES = 64 * 1024


# ------------------------------------------------------------------ which URLs


@dataclass(frozen=True)
class _Location:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]
    bare: bool  # no query and no fragment


# A path segment after decoding must be printable ASCII without these: a separator the
# server would split on ("/", "\\"), or a path parameter (";"), which Tomcat and Spring strip
# before resolving dot segments ("..;" is "..").
_FORBIDDEN_IN_SEGMENT = frozenset("/\\;")


def _segment(raw: str) -> str | None:
    """A path segment as every server reads it (percent-decoded until it no longer changes, so a
    segment encoded twice is judged as a server that decodes twice would), or None when it is a
    dot segment in any spelling, a path parameter, or not plain printable ASCII (overlong UTF-8,
    fullwidth dots and the like are folded into dots by some servers)."""
    decoded = raw
    for _ in range(4):
        if "%" not in decoded:
            break
        try:
            decoded = unquote_to_bytes(decoded).decode("ascii")
        except UnicodeDecodeError:
            return None
    if "%" in decoded or decoded in (".", "..") or not decoded.isascii() or not decoded.isprintable():
        return None
    if any(c in _FORBIDDEN_IN_SEGMENT for c in decoded):
        return None
    return decoded


def _path_segments(path: str) -> tuple[str, ...] | None:
    """The segments of a URL path, normalised (RFC 3986 6.2.2: percent-encoding decoded; no dot
    segments to remove, since any is refused), or None when the path is doubtful: a dot segment
    in any spelling (`..`, `%2e%2e`, `..;`), a `;` parameter, or an empty segment (`//`) other
    than one trailing slash."""
    if path in ("", "/"):
        return ()
    if not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # one trailing slash: "/fhir/" is "/fhir"
    segments = []
    for raw in parts:
        segment = _segment(raw) if raw else None
        if segment is None:
            return None
        segments.append(segment)
    return tuple(segments)


def _locate(url) -> _Location | None:
    """The parts of an http(s) URL that decide which server it reaches; None for anything doubtful."""
    if not isinstance(url, str) or any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        return None
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return None
    if scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None  # userinfo: "good.example@evil.example" reaches evil.example
    segments = _path_segments(parts.path)
    if segments is None:
        return None  # a server may resolve these out of the base path
    return _Location(scheme, host, port or DEFAULT_PORTS[scheme], segments, bare="?" not in url and "#" not in url)


def within(url, base: str) -> bool:
    """True when `url` is on the server `base` names: the same scheme, host and port, and a path
    equal to or under base's path, segment by segment."""
    target, root = _locate(url), _locate(base)
    if target is None or root is None:
        return False
    return (target.scheme, target.host, target.port) == (root.scheme, root.host, root.port) and target.segments[
        : len(root.segments)
    ] == root.segments


def is_base_url(url) -> bool:
    """An http(s) URL without credentials, dot segments, query or fragment: fit to be a base."""
    location = _locate(url)
    return location is not None and location.bare


def describe_host(url) -> str:
    """A URL fit for a log line or an answer: never its userinfo, query or fragment."""
    if not isinstance(url, str):
        return "(none)"
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(an unparseable URL)"
    if not host:
        return "(not a URL)"
    host = f"[{host}]" if ":" in host else host
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port else "") + parts.path
    return "".join(c if c.isprintable() else "?" for c in shown)[:200]


# ------------------------------------------------------------------ the deadline, on the socket


class _Watchdog:
    """Shuts down the socket of a request still in flight at its deadline.

    Connections are armed when a request is sent (with the deadline of the thread sending it)
    and disarmed when returned to the pool, before another thread can take them.
    """

    def __init__(self):
        self._wake = threading.Condition()
        self._armed: dict[HTTPConnection, float] = {}
        self._thread: threading.Thread | None = None
        self.local = threading.local()

    def arm(self, connection: HTTPConnection) -> None:
        deadline = getattr(self.local, "deadline", None)
        if deadline is None:
            return
        with self._wake:
            self._armed[connection] = deadline
            if self._thread is None:  # started lazily: after gunicorn forks its workers
                self._thread = threading.Thread(target=self._run, name="outbound-deadline", daemon=True)
                self._thread.start()
            self._wake.notify()

    def disarm(self, connection) -> None:
        with self._wake:
            self._armed.pop(connection, None)

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for connection in [c for c, deadline in self._armed.items() if deadline <= now]:
                    del self._armed[connection]
                    sock = getattr(connection, "sock", None)
                    if sock is not None:
                        # OSError: already closed; TypeError: not a socket (TLS in TLS)
                        with contextlib.suppress(OSError, TypeError):
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw fd, TLS or not
                soonest = min(self._armed.values(), default=None)
                self._wake.wait(None if soonest is None else max(soonest - now, 0.001))


def _watched_pools(watchdog: _Watchdog) -> dict[str, type]:
    """urllib3 pool classes whose connections the watchdog arms on send and disarms on return."""

    def connection_class(base: Any) -> type:
        class Watched(base):
            def request(self, *args, **kwargs):
                watchdog.arm(self)
                return super().request(*args, **kwargs)

        return Watched

    def pool_class(base: Any, connection: type) -> type:
        class WatchedPool(base):
            ConnectionCls = connection

            def _put_conn(self, conn):
                watchdog.disarm(conn)
                super()._put_conn(conn)

        return WatchedPool

    return {
        "http": pool_class(HTTPConnectionPool, connection_class(HTTPConnection)),
        "https": pool_class(HTTPSConnectionPool, connection_class(HTTPSConnection)),
    }


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose pools, direct or through a proxy from the environment, are watched."""

    def __init__(self, watchdog: _Watchdog, **kwargs):
        self._watched_pools = _watched_pools(watchdog)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._watched_pools

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = self._watched_pools
        return manager


# ------------------------------------------------------------------ one GET


class OutboundError(Exception):
    """Why a GET gave nothing usable; the message reads after "the server ..." (e.g. "did not answer ...")."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "timeout", "unreachable", "too-large", "over-budget", "encoding"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


def _decoder(content_encoding: str):
    """A zlib decompressor for the answer's Content-Encoding (None: identity)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    shown = "".join(c if c.isprintable() else "?" for c in encoding[:40])
    raise OutboundError(f"sent an unsupported Content-Encoding ({shown})", "encoding")


def _read_body(reply: requests.Response, max_bytes: int, spend: Callable[[int], None] | None = None) -> bytes:
    """The decoded body, read as a stream and refused beyond `max_bytes` (a gzip bomb included);
    `spend` is told each decoded chunk's size and raises OutboundError once a budget shared with
    other reads is spent."""
    too_large = OutboundError(f"sent an answer larger than {max_bytes} bytes", "too-large")
    decoder = _decoder(reply.headers.get("Content-Encoding", ""))
    declared = reply.headers.get("Content-Length", "")
    if decoder is None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    for chunk in reply.raw.stream(READ_CHUNK_BYTES, decode_content=False):
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, max_bytes + 1 - len(body))
            except zlib.error:
                raise OutboundError("sent a compressed body that does not inflate", "encoding") from None
            if decoder.unconsumed_tail:
                raise too_large  # the output filled the allowance with input still to inflate
        body += chunk
        if len(body) > max_bytes:
            raise too_large
        if spend is not None:
            spend(len(chunk))
    return bytes(body)


class Outbound:
    """One per server process and purpose: a pooled session whose requests end at their deadline."""

    def __init__(self, pool_connections: int = 8, pool_maxsize: int = 8):
        self._watchdog = _Watchdog()
        self.session = requests.Session()
        adapter = _WatchedAdapter(
            self._watchdog, pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=0
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def get(
        self, url: str, headers: dict, deadline: float, max_bytes: int, spend: Callable[[int], None] | None = None
    ) -> Reply:
        """The whole answer by `deadline` (time.monotonic()), at most `max_bytes` decoded, each chunk
        counted by `spend` (see _read_body); redirects come back as they are (status 3xx, empty body)."""
        left = deadline - time.monotonic()
        if left <= 0.01:
            raise OutboundError("did not answer within the time budget", "timeout")
        self._watchdog.local.deadline = deadline
        reply = None
        try:
            reply = self.session.get(
                url, headers=headers, timeout=(min(left, 1.0), left), stream=True, allow_redirects=False
            )
            body = b"" if reply.is_redirect else _read_body(reply, max_bytes, spend)
        except (requests.RequestException, urllib3.exceptions.HTTPError, HTTPException, OSError) as error:
            if time.monotonic() >= deadline or isinstance(error, requests.Timeout):
                raise OutboundError("did not answer within the time budget", "timeout") from None
            raise OutboundError(f"could not be reached ({type(error).__name__})", "unreachable") from None
        finally:
            self._watchdog.local.deadline = None
            if reply is not None:
                reply.close()  # back to the pool when read to the end, closed otherwise
        if time.monotonic() >= deadline:  # the watchdog may have cut a body that ends at close
            raise OutboundError("did not answer within the time budget", "timeout")
        return Reply(reply.status_code, reply.headers, body)
