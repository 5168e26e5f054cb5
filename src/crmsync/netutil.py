"""Binding a listening port ourselves, so that a port in use is an error we can word at once."""

from __future__ import annotations

import socket


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (IPv6 when the host has a colon), not yet listening.

    Raises the `OSError` of a port in use or an address not ours, with nothing left open.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["bind_tcp"]
