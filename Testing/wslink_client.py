"""A websocket client that speaks the page server's protocol (wslink: msgpack messages in chunks),
for the tests that act as a hostile local process or web page would."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgpack
from wslink.chunking import UnChunker, generate_chunks

#: Chunk size the page's own client uses.
CHUNK_BYTES = 4_194_304


class WslinkClient:
    """One websocket connection to ``ws_url`` with the given ``Origin`` (None: no header)."""

    def __init__(self, ws_url: str, origin: str | None) -> None:
        self.ws_url, self.origin = ws_url, origin
        self._ids = 0

    async def __aenter__(self) -> WslinkClient:
        self.session = aiohttp.ClientSession()
        headers = {"Origin": self.origin} if self.origin else {}
        try:
            self.ws = await self.session.ws_connect(self.ws_url, headers=headers)
        except BaseException:
            await self.session.close()
            raise
        self.unchunker = UnChunker()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.session.close()

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def call(self, method: str, args: list | None = None, timeout: float = 60) -> dict[str, Any] | None:
        """Send one call and return the answer to it (None when the server closed the connection)."""
        system = method.startswith("wslink.")
        self._ids += 1
        rpcid = f"system:c0:{self._ids}" if system else f"rpc:c0:{self._ids}"
        message = {"wslink": "1.0", "id": rpcid, "method": method, "args": args or [], "kwargs": {}}
        for chunk in generate_chunks(msgpack.packb(message), CHUNK_BYTES):
            await self.ws.send_bytes(bytes(chunk))
        return await self.answer(rpcid, timeout)

    async def answer(self, rpcid: str | None, timeout: float = 60) -> dict[str, Any] | None:
        """The next message answering ``rpcid`` (any message when None), or None once closed."""
        while True:
            received = await self.ws.receive(timeout=timeout)
            if received.type != aiohttp.WSMsgType.BINARY:
                return None
            full = self.unchunker.process_chunk(received.data)
            if full is None:
                continue
            message = full if isinstance(full, dict) else msgpack.unpackb(full)
            if rpcid is None or message.get("id") == rpcid:
                return message

    async def hello(self, secret: str) -> dict[str, Any] | None:
        return await self.call("wslink.hello", [{"secret": secret}])
