"""The fault-injecting proxy (tests/faultproxy.py) against a tiny local HTTP/1.1 server."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from faultproxy import FaultProxy


def payload(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD /len/N: N bytes; GET /chunked/N: the same, chunked; PUT: echoes the body's length."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are two sends: no 40 ms delayed-ACK wait

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        kind, n = self.path.strip("/").split("/")
        data = payload(int(n))
        self.send_response(200)
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 1000):
                part = data[i:i + 1000]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = str(len(body)).encode() + b" " + str(body == payload(len(body))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.hits = 0  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


@pytest.fixture
def proxy(upstream: ThreadingHTTPServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.server_address[1], seed=7) as p:
        yield p


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def conn(p: FaultProxy, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", p.port, timeout=timeout)


def get(c: http.client.HTTPConnection, path: str, method: str = "GET") -> tuple[int, bytes]:
    c.request(method, path)
    r = c.getresponse()
    return r.status, r.read()


def test_pass_keeps_one_connection_alive(proxy: FaultProxy, upstream: ThreadingHTTPServer) -> None:
    c = conn(proxy)
    try:
        assert get(c, "/len/100000") == (200, payload(100000))
        assert get(c, "/chunked/5500") == (200, payload(5500))
        assert get(c, "/len/10", "HEAD") == (200, b"")
        assert get(c, "/len/0") == (200, b"")
        c.request("PUT", "/x", body=payload(70000))
        assert c.getresponse().read() == b"70000 True"
        c.request("PUT", "/x", body=iter([payload(3000)]), encode_chunked=True)
        assert c.getresponse().read() == b"3000 True"
        c.request("PUT", "/x", body=payload(2000), headers={"Expect": "100-continue"})
        assert c.getresponse().read() == b"2000 True"
    finally:
        c.close()
    s = proxy.stats()
    assert (s.connections, s.upstream_connections, s.requests, s.faults) == (1, 1, 7, {})
    assert upstream.hits == 7  # type: ignore[attr-defined]
    assert s.bytes_to_client > 105500
    assert s.bytes_to_client == s.bytes_from_upstream + len(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert s.bytes_to_upstream > 75000
    assert s.bytes_to_upstream == s.bytes_from_client - len("Expect: 100-continue\r\n")


def test_http_503_answers_slowdown_without_upstream(proxy: FaultProxy, upstream: ThreadingHTTPServer) -> None:
    proxy.set_mode("slowdown")
    c = conn(proxy)
    try:
        status, body = get(c, "/len/100")
        assert status == 503 and b"<Code>SlowDown</Code>" in body
        assert get(c, "/len/100", "HEAD") == (503, b"")
        c.request("PUT", "/x", body=payload(5000))
        r = c.getresponse()
        assert r.status == 503 and b"SlowDown" in r.read()
        proxy.set_mode("pass")
        assert get(c, "/len/100") == (200, payload(100))  # the same connection goes on
    finally:
        c.close()
    assert upstream.hits == 1  # type: ignore[attr-defined]
    assert proxy.stats().faults == {"http_503": 3}
    assert proxy.stats().upstream_connections == 1


def test_reset_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.set_mode("reset", after_bytes=30000)
    c = conn(proxy)
    try:
        c.request("GET", "/len/100000")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Content-Length") == "100000"  # the headers came through
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)) as e:
            r.read()
        if isinstance(e.value, http.client.IncompleteRead):  # what arrived before the RST
            assert len(e.value.partial) <= 30000 and e.value.partial == payload(len(e.value.partial))
    finally:
        c.close()


def test_reset_sends_an_rst(proxy: FaultProxy) -> None:
    proxy.set_mode("reset", after_bytes=10)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /len/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # let the proxy cut it
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass


def test_truncate_closes_short_with_a_fin(proxy: FaultProxy) -> None:
    proxy.set_mode("truncate")  # default: half of the body
    c = conn(proxy)
    try:
        c.request("GET", "/len/100000")
        r = c.getresponse()
        with pytest.raises(http.client.IncompleteRead) as e:
            r.read()
        assert e.value.partial == payload(50000)
        c.close()
        c.request("GET", "/chunked/5000")  # chunked: 1 KiB of raw framing, then EOF
        r = c.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            r.read()
        c.close()
        with pytest.raises(http.client.RemoteDisconnected):  # no body to cut: closed before the headers
            get(c, "/len/10", "HEAD")
    finally:
        c.close()
    assert proxy.stats().faults == {"truncate": 3}


def test_stall_holds_then_pass_again(proxy: FaultProxy, upstream: ThreadingHTTPServer) -> None:
    c = conn(proxy)
    try:
        assert get(c, "/len/10") == (200, payload(10))
        proxy.set_mode("stall")
        stalled = conn(proxy, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            get(stalled, "/len/10")
        with pytest.raises(TimeoutError):  # a reused keep-alive connection stalls too
            c.sock.settimeout(0.5)  # type: ignore[union-attr]
            get(c, "/len/10")
        assert time.monotonic() - t0 >= 0.9
        stalled.close()
        c.close()
        proxy.set_mode("pass")
        c = conn(proxy)
        assert get(c, "/len/10") == (200, payload(10))
    finally:
        c.close()
    assert upstream.hits == 2  # type: ignore[attr-defined]
    assert proxy.stats().faults == {"stall": 2}


def test_probability_is_a_seeded_fraction(upstream: ThreadingHTTPServer) -> None:
    def run(seed: int) -> list[int]:
        with FaultProxy("127.0.0.1", upstream.server_address[1], mode="http_503", probability=0.3, seed=seed) as p:
            c = conn(p)
            try:
                return [get(c, "/len/10")[0] for _ in range(200)]
            finally:
                c.close()

    a, b = run(1), run(1)
    assert a == b  # the same seed, the same faults
    assert 30 <= a.count(503) <= 90 and a.count(200) == 200 - a.count(503)
    assert run(2) != a


def test_mixed_draws_every_fault(upstream: ThreadingHTTPServer) -> None:
    with FaultProxy("127.0.0.1", upstream.server_address[1], mode="mixed", probability=1.0, seed=3) as p:
        while set(p.stats().faults) != {"stall", "reset", "truncate", "http_503"}:
            assert p.stats().requests < 200, p.stats().faults
            c = conn(p, timeout=0.2)
            try:
                get(c, "/len/10")
            except (OSError, http.client.HTTPException):
                pass  # a stall (timeout), a reset or a truncated body
            finally:
                c.close()
        assert p.stats().faults.get("mixed") is None  # counted under the fault drawn


def test_exit_closes_everything_even_on_failure(upstream: ThreadingHTTPServer) -> None:
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="boom"), \
            FaultProxy("127.0.0.1", upstream.server_address[1], mode="stall") as p:
        held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        held.sendall(b"GET /len/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: p.stats().faults == {"stall": 1})
        p.set_mode("pass")
        live = conn(p)
        assert get(live, "/len/5") == (200, payload(5))
        raise RuntimeError("boom")
    try:
        assert held.recv(10) == b""  # the stalled connection was closed by the proxy
        assert live.sock is not None and live.sock.recv(10) == b""
    finally:
        held.close()
        live.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy") and t not in before]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", p.port), timeout=2):
        pass


def test_unknown_mode_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        proxy.set_mode("explode")
    with pytest.raises(ValueError):
        proxy.set_mode("reset", probability=1.5)
