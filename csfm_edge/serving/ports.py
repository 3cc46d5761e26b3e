"""The three ports a Triton server listens on (HTTP, gRPC = HTTP+1, metrics = HTTP+2), checked before it starts.

Triton binds them late, after loading every model, and reports a busy port by timing out; an address that is
no address of this machine fails the same way. Both are said here at once, in one line.
"""

from __future__ import annotations

import errno
import socket

from csfm_edge.errors import CsfmError

ROLES = ("HTTP", "gRPC", "metrics")


def check_ports(host: str, http_port: int) -> None:
    """Refuse a port out of range (all three must fit below 65536), a host that is no address here, and a port
    another process holds."""
    if isinstance(http_port, bool) or not isinstance(http_port, int) or not 1 <= http_port <= 65535 - 2:
        raise CsfmError(f"--port {http_port}: must be 1 to 65533 (gRPC listens on port+1 and metrics on port+2)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, http_port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CsfmError(f"--host {host!r} is not an address ({exc})") from None
    for offset, role in enumerate(ROLES):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no owner
            try:
                probe.bind((address[0], http_port + offset, *address[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CsfmError(f"port {http_port + offset} ({role}) on {host} is in use by another program: "
                                    "choose another --port (three ports from it are needed)") from None
                raise CsfmError(f"cannot listen on {host}:{http_port + offset} ({exc.strerror or exc}): "
                                "--host must be an address of this machine (0.0.0.0: every interface)") from None
