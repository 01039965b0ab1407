"""The web page in a real browser (Debian's Chromium, headless): load the sample, run the demo
ensemble with the risk map chosen, move the threshold slider, and see the heat map over the brain in
Slicer's slice views."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from browser import Browser, chromium_path
from PIL import Image

from BrainImageNetADLib.core.errors import BrainImageNetError
from BrainImageNetADLib.core.resources import default_bundle, sample_t1
from BrainImageNetADLib.model.bundle import read_card
from BrainImageNetADLib.viewer.web import safe_upload_name
from conftest import HANG_GUARD_S

pytestmark = pytest.mark.slow
#: Where the page test leaves its screenshots (the README's and the docs' come from here).
SCREENSHOTS = Path(os.environ.get("BRAINIMAGENET_SCREENSHOTS", "")) if os.environ.get("BRAINIMAGENET_SCREENSHOTS") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imported_models(folder: Path) -> Path:
    """A models folder holding one bundle imported from a Keras file of the authors' AD network
    (the independent tiny reference model of ``keras_reference``)."""
    import keras_reference as kr

    from BrainImageNetADLib.model.keras_import import import_keras_bundle

    models = folder / "models"
    source = kr.save_legacy_h5(kr.ad_network(0.0625), folder / "fold0.h5")
    import_keras_bundle([source], models / "imported-ad")
    return models


@pytest.fixture()
def page_server(tmp_path: Path):
    """The page server started as a user starts it; yields (the URL it prints, with this launch's
    secret; the temporary folder; the process)."""
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the session's temporary folder is made in here
    models = imported_models(tmp_path / "keras")
    command = ["web", "--port", str(port), "--heat-map", "fold", "--max-upload-mb", "5", "--models", str(models)]
    process = subprocess.Popen(
        [sys.executable, "-m", "BrainImageNetADLib.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    end = time.monotonic() + HANG_GUARD_S
    url = None
    while url is None:
        assert process.poll() is None, "the page server stopped"
        assert time.monotonic() < end, "the page server did not start"
        try:
            match = re.search(r"BrainImageNet-AD page: (http://\S+)", lines.get(timeout=1))
        except queue.Empty:
            continue
        url = match.group(1) if match else None
    assert url.startswith(f"http://127.0.0.1:{port}/?secret=")
    yield url, tmp_path, process
    process.terminate()
    process.wait(30)
    assert not list(tmp_path.glob("brainimagenet-ad-*")), "the server left its session folder behind"


def view_pixels(screenshot: bytes, box: dict[str, float]) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    return image[y : y + h, x : x + w]


def heat_inside_brain(pixels: np.ndarray) -> float:
    """Fraction of the brain's pixels (not black) that are coloured (heat map), in a slice view."""
    inside = pixels.max(axis=2) > 40
    inside[-40:] = False  # the view's slice slider
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    return float(coloured[inside].mean()) if inside.any() else 0.0


async def slice_views_heat(browser: Browser) -> list[float]:
    shot = await browser.screenshot()
    boxes = await browser.js(
        "Array.from(document.querySelectorAll('img.image-display-area')).map(e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })"
    )
    return [heat_inside_brain(view_pixels(shot, box)) for box in boxes]


async def choose(browser: Browser, select: str, entry: str) -> None:
    """Open the drop-down ``select`` and click its entry whose text holds ``entry`` (real clicks)."""
    await browser.click(select)
    item = f"Array.from(document.querySelectorAll('.v-list-item')).find(e => e.innerText.includes('{entry}'))"
    await browser.wait_for(item, 30)
    await asyncio.sleep(1)  # let the menu's opening transition finish before clicking an entry
    box = await browser.js(
        f"(() => {{ const r = {item}.getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
    )
    await browser.click_at(box["x"], box["y"])
    await asyncio.sleep(1)  # the menu closes


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/setup.sh installs it)")
def test_page_runs_the_sample_and_shows_the_heat_map(page_server: tuple[str, Path, subprocess.Popen]) -> None:
    url, tmp, _ = page_server

    async def drive() -> None:
        async with Browser() as browser:
            await browser.goto(url)
            await browser.wait_for("document.querySelector('#load-sample')", 90)
            assert "not for diagnosis" in await browser.js("document.querySelector('#demo-banner').innerText")
            assert "DEMONSTRATION MODEL" in await browser.js("document.querySelector('#intended-use').innerText")
            # Uploads: a file over the limit is refused in the page; a T1 under it becomes the input.
            big = tmp / "big_t1.nii.gz"
            big.write_bytes(os.urandom(6_000_000))
            await browser.set_file("input#upload[type=file], #upload input[type=file]", big)
            await browser.wait_for(
                "document.querySelector('#error') && document.querySelector('#error').innerText.includes('5 MB limit')", 30
            )
            # A file of a few dozen bytes whose header claims a 13.5 GB image is refused from its header.
            huge = tmp / "huge_t1.nii.gz"
            header = nib.Nifti1Header()
            header.set_data_shape((1500, 1500, 1500))
            header.set_data_dtype(np.float32)
            huge.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
            await browser.set_file("input#upload[type=file], #upload input[type=file]", huge)
            await browser.wait_for(
                "document.querySelector('#error') && document.querySelector('#error').innerText.includes('1500x1500x1500')", 60
            )
            small = tmp / "upload_t1.nii.gz"
            small.write_bytes(sample_t1().read_bytes())
            await browser.set_file("input#upload[type=file], #upload input[type=file]", small)
            await browser.wait_for("document.querySelector('#input-name').innerText.includes('upload_t1')", 60)
            assert list(tmp.glob("brainimagenet-ad-*/uploads/upload_t1.nii.gz"))
            await browser.click("#load-sample")
            await browser.wait_for("document.querySelector('#input-name').innerText.includes('Sample T1')", 60)
            before = await slice_views_heat(browser)
            assert max(before) < 0.01, "coloured pixels before any run"
            await choose(browser, "#heat-map", "Risk map, whole ensemble (exact)")  # instead of the server's default
            await browser.click("#run")
            await browser.wait_for("document.querySelector('#cancel') && document.querySelector('#stage-message')", 30)
            await browser.wait_for("document.querySelector('#probability')", HANG_GUARD_S, every=2)
            assert not await browser.js("document.querySelector('#error')")
            label = await browser.js("document.querySelector('#label').innerText")
            probability = float(await browser.js("document.querySelector('#probability').innerText"))
            assert label == ("AD" if probability >= 0.5 else "NC")  # the card's balanced threshold
            sensitivity = await browser.js("document.querySelector('#sensitivity').innerText")
            # The run left files in the session's own temporary folder: the risk map in MNI and native space.
            (result_file,) = tmp.glob("brainimagenet-ad-*/run-1/output/result.json")
            risk = json.loads(result_file.read_text())["risk_map"]
            assert risk["files"] == {"mni": "risk_map.nii.gz", "native": "risk_map_native.nii.gz"}
            assert all((result_file.parent / name).is_file() for name in risk["files"].values())
            # The heat map appears over the brain in the slice views (rendered by Slicer, on the server).
            end = time.monotonic() + 60
            while max(heat := await slice_views_heat(browser)) < 0.02:
                assert time.monotonic() < end, f"no heat map in the slice views: {heat}"
                await asyncio.sleep(1)
            if SCREENSHOTS is not None:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await browser.screenshot(SCREENSHOTS / "web.png")
            # A real click at the left end of the threshold slider: threshold 0, every case is AD,
            # sensitivity 100 % from the card, and no network ran (the probability is unchanged).
            track = await browser.rect("#threshold .v-slider-track")
            await browser.click_at(track["x"] + 1, track["y"] + track["height"] / 2)
            await browser.wait_for("document.querySelector('#label').innerText === 'AD'", 30)
            assert await browser.js("document.querySelector('#sensitivity').innerText") != sensitivity or label == "AD"
            assert float(await browser.js("document.querySelector('#probability').innerText")) == probability
            await browser.click("#preset-screening")
            screening = read_card(default_bundle()).threshold_presets["screening"]
            await browser.wait_for(f"Number(document.querySelector('#threshold input').value) === {screening!r}", 30)
            # Opacity 0 hides the heat map without a re-run.
            opacity = await browser.rect("#opacity .v-slider-track")
            await browser.click_at(opacity["x"] + 1, opacity["y"] + opacity["height"] / 2)
            await browser.wait_for("Number(document.querySelector('#opacity input').value) === 0", 30)
            end = time.monotonic() + 30
            while max(faded := await slice_views_heat(browser)) > 0.5 * max(heat):
                if time.monotonic() > end:
                    await browser.screenshot(tmp / "faded.png")
                    pytest.fail(f"opacity 0 did not fade the heat map: {heat} -> {faded}")
                await asyncio.sleep(1)
            # The chooser lists the bundle imported into --models; choosing it (real clicks) shows its banner.
            await choose(browser, "#model", "imported-ad")
            await browser.wait_for("document.querySelector('#demo-banner').innerText.includes('Third-party model')", 60)
            assert "all rights reserved" in await browser.js("document.querySelector('#intended-use').innerText")
            await browser.goto("about:blank")  # the page closes: the session ends

    asyncio.run(drive())
    # Closing the page ended the session: its temporary folder is gone, the server still serves.
    end = time.monotonic() + 30
    while list(tmp.glob("brainimagenet-ad-*/run-1")):
        assert time.monotonic() < end, "the session's files were not deleted"
        time.sleep(0.5)


def test_upload_names_are_made_safe() -> None:
    assert safe_upload_name("../../etc/sub 01_T1w.nii.gz") == "sub_01_T1w.nii.gz"
    assert safe_upload_name("C:\\scans\\t1.nrrd") == "t1.nrrd"
    with pytest.raises(BrainImageNetError, match="upload a T1 image file"):
        safe_upload_name("notes.txt")


def _resident_mb(pid: int) -> float:
    """Resident memory of a process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_page_server_lets_in_only_the_page_it_printed(page_server: tuple[str, Path, subprocess.Popen]) -> None:
    """A hostile local process or web page, with a real websocket client: no key, a foreign
    Origin, a second client, a forged exit, an oversize message with a false declared size, and a
    failing call all fail without harm, and the page's owner still gets in."""
    import aiohttp
    from wslink.chunking import generate_chunks
    from wslink_client import WslinkClient

    url, _, process = page_server
    secret = url.split("secret=", 1)[1]
    host = url.split("/")[2]
    ws_url, origin = f"ws://{host}/ws", f"http://{host}"

    async def refused_handshake(client_origin: str | None, ws: str = ws_url) -> int:
        try:
            async with WslinkClient(ws, client_origin):
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status

    async def probe() -> None:
        assert await refused_handshake("http://evil.example") == 403
        assert await refused_handshake(None) == 403
        assert await refused_handshake(f"http://evil.example:{host.split(':')[1]}", f"ws://localhost:{host.split(':')[1]}/ws") == 403
        async with WslinkClient(ws_url, origin) as stranger:
            # trame's public default key and a guessed one are refused; so is any call after them.
            for key in ("wslink-secret", secret[:-1]):
                assert (await stranger.hello(key))["error"]["message"] == "Authentication failed"
            forged = await stranger.call("application.exit")
            assert "Unauthorized" in forged["error"]["message"]
            # While this page is connected, a second one is refused: no one shares its case.
            assert await refused_handshake(origin) == 409
        assert process.poll() is None, "the forged exit stopped the server"
        async with WslinkClient(ws_url, origin) as owner:
            assert "clientID" in (await owner.hello(secret))["result"]
            failed = await owner.call("trame.state.update", ["not a list of changes"])
            assert failed["error"]["data"] == {"method": "trame.state.update"}  # no exception, no traceback
            # A message declaring 2 GB is refused before any memory is taken for it; the
            # connection is closed and the server lives on.
            before = _resident_mb(process.pid)
            chunk = bytes(next(iter(generate_chunks(b"x" * 1000, 1000))))
            header = bytearray(chunk[:12])
            header[8:12] = (2_000_000_000).to_bytes(4, "little")
            await owner.send_raw(bytes(header) + chunk[12:])
            assert await owner.answer(None, timeout=60) is None
            assert _resident_mb(process.pid) < before + 200
        # A message larger than it declares is refused too.
        async with WslinkClient(ws_url, origin) as owner:
            assert "clientID" in (await owner.hello(secret))["result"]
            chunk = bytes(next(iter(generate_chunks(b"x" * 10, 1000))))
            await owner.send_raw(chunk[:12] + b"y" * 3_000_000)
            assert await owner.answer(None, timeout=60) is None
        async with WslinkClient(ws_url, origin) as owner:
            assert "clientID" in (await owner.hello(secret))["result"]
        assert process.poll() is None

    asyncio.run(probe())
