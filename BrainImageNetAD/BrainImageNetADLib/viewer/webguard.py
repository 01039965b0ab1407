"""Who may use the web page's server: the person who started it, through the page it serves.

- A random secret made at each launch is the websocket's key (wslink's ``wslink.hello``); the
  URL the command prints carries it (``?secret=``), and nothing else is accepted.
- The websocket handshake must come from the served origin: an ``Origin`` header equal to
  ``http://`` + the request's ``Host``, a host name the server listens for (no DNS rebinding).
- One page at a time: a second websocket is refused while one is open (409), so no one takes
  over, reads or ends another's case.
- Messages are capped after the key is checked (wslink allows 4 GB otherwise): a message whose
  declared size exceeds the upload limit is refused before any memory is taken for it.
- Errors go to the server's log only: the page gets the method's name, never the exception or
  its traceback.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

#: Host names that reach a server listening on the loopback interface.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: Room above the upload limit for the message that carries an upload (msgpack, file fields).
MESSAGE_OVERHEAD_BYTES = 1_000_000


def new_secret() -> str:
    """A random key for one launch (URL-safe; starts with a letter so that the page's URL parser
    never reads it as a number)."""
    return "k" + secrets.token_urlsafe(24)


def _host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (``127.0.0.1:8080`` -> ``127.0.0.1``, ``[::1]:80`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def handshake_refusal(headers: Any, listen_host: str, open_websockets: int) -> tuple[int, str] | None:
    """Why a websocket handshake with these request ``headers`` is refused (HTTP status, reason),
    or None when it may go on."""
    host = headers.get("Host", "")
    names = set(LOOPBACK_NAMES) if listen_host in LOOPBACK_NAMES else {listen_host}
    if listen_host not in ("0.0.0.0", "::") and _host_name(host) not in names:
        return 403, "unknown host"
    if headers.get("Origin") != f"http://{host}":
        return 403, "foreign origin"
    if open_websockets > 0:
        return 409, "another page is connected to this session"
    return None


def protect(web_server: Any, listen_host: str, max_message_bytes: int) -> None:
    """Apply the rules above to a wslink aiohttp server before it starts (trame's
    ``on_server_bind``): a middleware on its application, and its websocket handlers wrapped."""
    from aiohttp import web

    open_websockets = [0]

    @web.middleware
    async def one_page_from_its_origin(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await handler(request)
        refusal = handshake_refusal(request.headers, listen_host, open_websockets[0])
        if refusal is not None:
            return web.Response(status=refusal[0], text=refusal[1])
        open_websockets[0] += 1
        try:
            return await handler(request)
        finally:
            open_websockets[0] -= 1

    web_server.app.middlewares.append(one_page_from_its_origin)
    for ws_handler in web_server._ws_handlers:
        _cap_messages(ws_handler, max_message_bytes)
        _hide_tracebacks(ws_handler)


def _cap_messages(ws_handler: Any, max_message_bytes: int) -> None:
    on_message = ws_handler.onMessage

    async def capped(is_binary: bool, msg: Any, client_id: str) -> Any:
        unchunker = ws_handler.unchunkers.get(client_id)
        if unchunker is not None and unchunker.max_message_size > max_message_bytes:
            unchunker.set_max_message_size(max_message_bytes)
        return await on_message(is_binary, msg, client_id)

    ws_handler.onMessage = capped


def _hide_tracebacks(ws_handler: Any) -> None:
    send_error = ws_handler.sendWrappedError

    async def without_details(rpcid: Any, code: int, message: str, data: Any = None, client_id: Any = None) -> Any:
        if isinstance(data, dict):
            data = {"method": data["method"]} if "method" in data else None
        return await send_error(rpcid, code, message, data, client_id=client_id)

    ws_handler.sendWrappedError = without_details
