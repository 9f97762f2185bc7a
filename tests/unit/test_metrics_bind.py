"""Metrics have no authentication: ":PORT" means this host only, and a wildcard bind is said in the log."""

from __future__ import annotations

import logging

import pytest
from helpers import free_port

from tierfs.metrics import serve


def test_a_port_alone_binds_loopback() -> None:
    server = serve(f":{free_port()}")
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_wildcard_bind_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        server = serve(f"0.0.0.0:{free_port()}")
    try:
        assert server.server_address[0] == "0.0.0.0"
        assert "every interface" in caplog.text
    finally:
        server.shutdown()
        server.server_close()
