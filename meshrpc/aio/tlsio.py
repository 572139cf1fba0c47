"""TLS in the asyncio driver: the same contexts and error texts as the threaded one (transport/tls.py,
imported only when SSL is on), over asyncio's own SSL transports, and which socket the fast paths
may touch.

The aio proxy and daemon read and write their sockets directly where that saves a turn of the loop
or a copy (aio/spin.py, aio/cork.py, the proxy's reads between writes). Under TLS the socket carries
records only the transport's SSL object can decrypt, so those paths must not touch it:
`raw_socket(transport)` is None then, and everything goes through the transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..limits import HOUSEKEEPING_INTERVAL


def raw_socket(transport: asyncio.BaseTransport) -> Any:
    """The socket whose bytes are the messages themselves (read and written directly by the fast
    paths), or None: a TLS transport (its socket carries TLS records), or none at all."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    return transport.get_extra_info("socket")


def client_ssl(settings: Any, host: str | None) -> tuple[Any, str | None]:
    """(ssl context, server_hostname) for a proxy's connection: (None, None) without SSL. Over a Unix
    socket (no host) only the chain is checked, as by the threaded proxy; asyncio wants a hostname
    argument there, and "" names none."""
    if not settings.SSL:
        return None, None
    from ..transport import tls
    return tls.client_context(settings, check_hostname=bool(host)), host or ""



def close_unanswered(transport: asyncio.BaseTransport) -> None:
    """After the daemon's `transport.close()` of a client's connection: under TLS, end the TCP connection
    under it once the replies and the close_notify have gone to it, without waiting for the client's
    close_notify, as the threaded daemon and Pyro5 close. asyncio's TLS layer waits for that answer up to
    its ssl_shutdown_timeout (30 s; for ever once the loop stops), and a blocking client answers only at
    its next read: the connection, and its slot (MAX_CONNECTIONS), stayed. While a slow client still
    takes what waits, asked again every HOUSEKEEPING_INTERVAL (the TLS layer's own timeout ends it at
    last). Nothing to do without TLS, or on a loop whose TLS transport is not asyncio's own."""
    tcp = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)  # (asyncio's sslproto)
    if tcp is None or tcp.is_closing() or not transport.is_closing():
        return
    if transport.get_write_buffer_size():  # (encrypted bytes the TCP transport has not taken yet)
        asyncio.get_running_loop().call_later(HOUSEKEEPING_INTERVAL, close_unanswered, transport)
        return
    tcp.close()  # (it sends what it holds first)
