"""A headless Chromium driven over the DevTools protocol (aiohttp websocket), for the page tests:
navigate, evaluate JavaScript, click with real mouse events, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp


def chromium_path() -> str | None:
    """The Chromium executable (Debian's ``chromium``), or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page (use as ``async with Browser() as browser``)."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.width, self.height = width, height
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._process = subprocess.Popen(
            [
                chromium_path(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-gl=swiftshader",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        endpoint = None
        end = time.monotonic() + 60
        while endpoint is None and time.monotonic() < end:
            line = await asyncio.to_thread(self._process.stderr.readline)
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                endpoint = match.group(1)
        if endpoint is None:
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        port = re.search(r":(\d+)/", endpoint).group(1)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        await self._session.close()
        self._process.terminate()
        self._process.wait(10)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events met on the way are skipped)."""
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self._ws.receive()).data)
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def js(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its value (JSON-able)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, every: float = 0.5) -> None:
        """Evaluate ``expression`` until it is truthy in JavaScript's sense."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if await self.js(f"Boolean({expression})"):
                return
            await asyncio.sleep(every)
        raise TimeoutError(f"timed out waiting for: {expression}")

    async def rect(self, selector: str) -> dict[str, float]:
        """Bounding box (CSS pixels: x, y, width, height) of the first element matching ``selector``,
        scrolled into the middle of its scrolling panel first, as a person scrolls to what they click."""
        rect = await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )
        return rect

    async def click_at(self, x: float, y: float) -> None:
        """A real left click (press and release) at page coordinates (CSS pixels)."""
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def click(self, selector: str) -> None:
        """Click the centre of the element matching ``selector``."""
        box = await self.rect(selector)
        await self.click_at(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    async def set_file(self, selector: str, path: Path) -> None:
        """Choose ``path`` in the file input matching ``selector``, as a person picking a file does."""
        found = await self.send("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")
        await self.send("DOM.setFileInputFiles", files=[str(path)], objectId=found["result"]["objectId"])

    async def screenshot(self, path: Path | None = None) -> bytes:
        """PNG of the viewport; also written to ``path`` when given."""
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data
