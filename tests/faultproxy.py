"""A fault-injecting TCP proxy for HTTP/1.1 object-store endpoints, for tests.

    with FaultProxy("127.0.0.1", server.s3_port, seed=1) as proxy:
        cfg = server.s3_config(path, endpoint=proxy.endpoint)
        ...
        proxy.set_mode("stall")                    # every request from now on
        proxy.set_mode("reset", probability=0.3)   # 30% of requests, seeded
        proxy.set_mode("pass")

Stdlib only: one thread accepts, one thread serves each client connection. The
proxy parses just enough HTTP/1.1 (request line, headers, Content-Length or
chunked bodies, HEAD/204/304 without bodies) to see where each request and
response starts and ends, so that a mode applies per request even on a
keep-alive connection that the client reuses. Each request draws once from the
seeded RNG; when the draw is under ``probability`` (and the mode is not
``pass``) the request gets the mode's fault:

``pass``
    forward both ways.
``stall``
    keep reading what the client sends but never answer and forward nothing;
    the connection is held open (a black hole) until the client closes it or
    the proxy stops. A connection that stalled stays stalled after a switch
    back to ``pass``, as a dead peer would.
``reset``
    forward the response headers and ``after_bytes`` bytes of its body, then
    close with an RST (SO_LINGER 0).
``truncate``
    the same, but a clean close (FIN): a response shorter than its headers say.
``http_503`` (alias ``slowdown``)
    answer S3's ``503 SlowDown`` XML error without contacting the upstream;
    the connection stays usable.
``mixed``
    one of the four faults above, drawn for each faulted request (a store that
    fails in every way at once: a fast failure, then a stall on the retry).

For ``reset``/``truncate``, ``after_bytes=None`` means half of the body. A
response without a body (HEAD, 204, 304, empty) is cut before its headers:
the client sees a connection closed without a response.

A request with ``Expect: 100-continue`` is answered ``100 Continue`` by the
proxy itself and forwarded without that header. Requests are not pipelined
(clients of object stores do not pipeline): one request, then its response.

On exit the context manager shuts down and closes every socket it opened or
accepted and joins its threads, also when the body of the ``with`` failed.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("stall", "reset", "truncate", "http_503")  # what ``mixed`` draws from
MODES = ("pass", *FAULTS, "slowdown", "mixed")
_MAX_HEAD = 64 * 1024  # longest request/response head we accept
_CHUNK = 64 * 1024


class _Closed(Exception):
    """The peer closed (or reset) the connection, or the proxy is stopping."""


class _Stream:
    """A socket with a read buffer: just what parsing HTTP framing needs."""

    def __init__(self, sock: socket.socket, counter: str, proxy: FaultProxy):
        self.sock, self.counter, self.proxy = sock, counter, proxy
        self.buf = b""

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_CHUNK)
        except OSError as exc:
            raise _Closed(str(exc)) from exc
        if not data:
            raise _Closed("eof")
        self.proxy._count(self.counter, len(data))
        self.buf += data

    def read_head(self, at_start: bool = True) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > _MAX_HEAD:
                raise _Closed("head too long")
            try:
                self._fill()
            except _Closed:
                if at_start and not self.buf:
                    return None
                raise
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > _MAX_HEAD:
                raise _Closed("line too long")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` buffered or newly received bytes (at least one)."""
        if not self.buf:
            self._fill()
        data, self.buf = self.buf[:limit], self.buf[limit:]
        return data


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """First line, and headers with lower-case names (a repeated header: the last wins)."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _body_framing(headers: dict[str, str]) -> int | str:
    """'chunked', a Content-Length, or 'close' (read until EOF)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked"
    if "content-length" in headers:
        return int(headers["content-length"])
    return "close"


class _Cut(Exception):
    """The fault's byte budget is used up: stop forwarding here."""


class _Budget:
    """Counts body bytes forwarded; raises _Cut once ``left`` reaches 0 (None: no limit)."""

    def __init__(self, left: int | None):
        self.left = left

    def send(self, dst: socket.socket, data: bytes, proxy: FaultProxy, counter: str) -> None:
        if self.left is not None and len(data) >= self.left:
            data, cut = data[: self.left], True
        else:
            cut = False
        if data:
            proxy._count(counter, len(data))  # before the send: a peer that has the bytes sees them counted
            dst.sendall(data)
            if self.left is not None:
                self.left -= len(data)
        if cut:
            raise _Cut


def _forward_body(src: _Stream, dst: socket.socket | None, framing: int | str, budget: _Budget,
                  proxy: FaultProxy, counter: str) -> None:
    """Move one message body from ``src`` to ``dst`` (None: read and drop it), raw bytes as framed."""

    def move(data: bytes) -> None:
        if dst is not None:
            budget.send(dst, data, proxy, counter)

    if framing == "close":
        while True:
            try:
                data = src.read_some(_CHUNK)
            except _Closed:
                return
            move(data)
    elif framing == "chunked":
        while True:
            size_line = src.readline()
            move(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:  # last chunk: trailers up to a blank line
                while (line := src.readline()) != b"\r\n":
                    move(line)
                move(line)
                return
            left = size + 2  # data and its CRLF
            while left:
                data = src.read_some(left)
                left -= len(data)
                move(data)
    else:
        left = int(framing)
        while left:
            data = src.read_some(min(left, _CHUNK))
            left -= len(data)
            move(data)


def _slowdown(method: str, n: int) -> bytes:
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message>"
            b"<RequestId>faultproxy-%d</RequestId></Error>" % n)
    head = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            b"Content-Length: %d\r\nx-amz-request-id: faultproxy-%d\r\nConnection: keep-alive\r\n\r\n" % (len(body), n))
    return head if method == "HEAD" else head + body


@dataclass
class Stats:
    connections: int = 0        # client connections accepted
    requests: int = 0           # requests read from clients
    upstream_connections: int = 0
    bytes_from_client: int = 0
    bytes_to_upstream: int = 0
    bytes_from_upstream: int = 0
    bytes_to_client: int = 0
    faults: dict[str, int] = field(default_factory=dict)  # fault -> requests it was applied to


class FaultProxy:
    """A proxy on 127.0.0.1 (a free port) in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, mode: str = "pass", probability: float = 1.0,
                 after_bytes: int | None = None, seed: int = 0, connect_timeout: float = 5.0):
        self.upstream = (upstream_host, upstream_port)
        self.connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stats = Stats()
        self._lines: list[str] = []  # every request line read, in order
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self.set_mode(mode, probability, after_bytes)

    # -- control, from the test ---------------------------------------------------------------
    def set_mode(self, mode: str, probability: float = 1.0, after_bytes: int | None = None) -> None:
        """From the next request on, ``mode`` applies to that fraction of requests."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            self._mode = "http_503" if mode == "slowdown" else mode
            self._probability, self._after_bytes = probability, after_bytes

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request_lines(self) -> list[str]:
        """``METHOD /path?query HTTP/1.1`` of every request read so far."""
        with self._lock:
            return list(self._lines)

    def stats(self) -> Stats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return Stats(**{**s.__dict__, "faults": dict(s.faults)})

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._track(lst)
        lst.bind(("127.0.0.1", 0))
        lst.listen(128)
        self._listener, self.port = lst, lst.getsockname()[1]
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self) -> None:
        """Close every socket (which wakes every blocked thread), then join the threads."""
        self._stop.set()
        with self._lock:
            socks, self._sockets = list(self._sockets), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in list(self._threads):
            t.join(timeout=10)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"faultproxy threads did not stop: {alive}")

    def __enter__(self) -> FaultProxy:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)

    def _track(self, s: socket.socket) -> None:
        if s.type == socket.SOCK_STREAM and s is not self._listener:
            # Heads and bodies go out in separate sends: without this, Nagle's algorithm
            # and the peer's delayed ACK add 40 ms to many responses.
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stop.is_set():  # raced with stop(): do not leak it
                s.close()
                raise _Closed("stopping")
            self._sockets.add(s)

    def _untrack(self, s: socket.socket | None, rst: bool = False) -> None:
        if s is None:
            return
        with self._lock:
            self._sockets.discard(s)
        if rst:  # SO_LINGER with a zero timeout: close() sends an RST, not a FIN
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()

    def _spawn(self, fn: Any, name: str, *args: Any) -> None:
        t = threading.Thread(target=self._run, args=(fn, *args), name=name, daemon=True)
        with self._lock:
            self._threads = {x for x in self._threads if x.is_alive()}
            self._threads.add(t)
        t.start()

    def _run(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(_Closed, OSError, ValueError):
            fn(*args)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            conn, _addr = self._listener.accept()  # OSError once stop() shut the listener down
            try:
                self._track(conn)
            except _Closed:
                return
            self._count("connections")
            self._spawn(self._serve, "faultproxy-conn", conn)

    def _draw(self) -> tuple[str, int | None]:
        """This request's fault ('pass' for none), one RNG draw per request."""
        with self._lock:
            self._stats.requests += 1
            hit = self._rng.random() < self._probability
            mode = self._mode if hit else "pass"
            if mode == "mixed":
                mode = self._rng.choice(FAULTS)
            if mode != "pass":
                self._stats.faults[mode] = self._stats.faults.get(mode, 0) + 1
            return mode, self._after_bytes

    def _serve(self, client_sock: socket.socket) -> None:
        client = _Stream(client_sock, "bytes_from_client", self)
        up_sock: socket.socket | None = None  # opened at the first request that needs it
        upstream: _Stream | None = None
        rst = False
        try:
            while not self._stop.is_set():
                head = client.read_head()
                if head is None:
                    return  # the client closed its keep-alive connection
                line, headers = _parse_head(head)
                with self._lock:
                    self._lines.append(line)
                method = line.split(" ", 1)[0].upper()
                mode, after = self._draw()
                if mode == "stall":
                    while True:  # swallow whatever comes, answer nothing, until EOF or stop()
                        client.read_some(_CHUNK)
                if "100-continue" in headers.get("expect", "").lower():
                    self._count("bytes_to_client", 25)
                    client_sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"".join(ln + b"\r\n" for ln in head.split(b"\r\n")[:-2]
                                    if not ln.lower().startswith(b"expect:")) + b"\r\n"
                framing = _body_framing(headers)
                if framing == "close":
                    framing = 0  # a request without length or chunking has no body
                if mode == "http_503":  # drop the request body, answer for the store
                    _forward_body(client, None, framing, _Budget(None), self, "")
                    answer = _slowdown(method, self.stats().requests)
                    self._count("bytes_to_client", len(answer))
                    client_sock.sendall(answer)
                    continue
                if up_sock is None:
                    up_sock = socket.create_connection(self.upstream, timeout=self.connect_timeout)
                    up_sock.settimeout(None)
                    self._track(up_sock)
                    self._count("upstream_connections")
                    upstream = _Stream(up_sock, "bytes_from_upstream", self)
                assert upstream is not None
                self._count("bytes_to_upstream", len(head))
                up_sock.sendall(head)
                _forward_body(client, up_sock, framing, _Budget(None), self, "bytes_to_upstream")
                keep = self._relay_response(upstream, client_sock, method, mode, after, headers)
                if not keep:
                    rst = mode == "reset"
                    return
        finally:
            self._untrack(up_sock)
            self._untrack(client_sock, rst=rst)

    def _relay_response(self, upstream: _Stream, client_sock: socket.socket, method: str, mode: str,
                        after: int | None, req_headers: dict[str, str]) -> bool:
        """Forward one response (cut short if ``mode`` says so); whether the connection lives on."""
        while True:
            head = upstream.read_head(at_start=False)
            assert head is not None
            line, headers = _parse_head(head)
            status = int(line.split(" ", 2)[1])
            if not 100 <= status < 200:
                break
            self._count("bytes_to_client", len(head))
            client_sock.sendall(head)  # 1xx informational: its final response follows
        framing: int | str = _body_framing(headers)
        if method == "HEAD" or status in (204, 304):
            framing = 0
        if mode in ("reset", "truncate"):
            if framing == 0:
                return False  # nothing to cut short: close before the headers
            if after is None:
                after = framing // 2 if isinstance(framing, int) else 1024
        self._count("bytes_to_client", len(head))
        client_sock.sendall(head)
        budget = _Budget(after if mode in ("reset", "truncate") else None)
        try:
            _forward_body(upstream, client_sock, framing, budget, self, "bytes_to_client")
        except _Cut:
            return False
        if mode in ("reset", "truncate"):
            return False  # the budget outlived the body: still cut the connection after it
        closing = "close" in (headers.get("connection", "").lower(), req_headers.get("connection", "").lower())
        return framing != "close" and not closing
