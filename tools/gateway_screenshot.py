#!/usr/bin/env python3
"""Regenerate docs/gateway.png and docs/gateway-service.png: a small home mesh in this process, the
gateway, and headless Chromium (the browser test's DevTools client, tests/integration/cdp.py).

    python3 tools/gateway_screenshot.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration"), str(REPO / "tests")]

import meshrpc  # noqa: E402
from cdp import Browser, find_chromium  # noqa: E402
from gateway_home import Lights, Sprinkler, Thermostat  # noqa: E402
from gateway_support import GatewayThread, post_json, request  # noqa: E402


async def shoot(url: str, out: Path, arrive: Any) -> None:
    chromium = find_chromium()
    assert chromium, "needs chromium"
    async with Browser(chromium, 1200, 900) as browser:
        page = await browser.page()
        await page.goto(url + "/")
        await page.wait_for("document.querySelectorAll('#services tbody tr').length >= 6", 30, "the services")
        await page.wait_for("document.getElementById('status').dataset.state === 'live'", 30)
        arrive()            # one arrival while the page watches: it shows in the activity list
        await page.wait_for("document.querySelectorAll('#services tbody tr').length >= 7", 30, "the arrival")
        height = await page.evaluate("document.querySelector('footer').getBoundingClientRect().bottom + 16")
        await page.send("Page.captureScreenshot", format="png")       # settle fonts
        data = await page.send("Page.captureScreenshot", format="png",
                               clip={"x": 0, "y": 0, "width": 1200, "height": height, "scale": 1})
        import base64
        (out / "gateway.png").write_bytes(base64.b64decode(data["data"]))
        await page.evaluate("location.hash = '#/s/http.garden.sprinkler'")
        await page.wait_for("!!document.querySelector('form[data-method=\"water\"]')", 30)
        await page.evaluate("""(() => { const f = document.querySelector('form[data-method="water"]');
            f.querySelector('input.args').value = '["roses"]';
            f.querySelector('input.kwargs').value = '{"minutes": 5}'; f.requestSubmit(); })()""")
        await page.wait_for("!!document.querySelector('.result[data-method=\"water\"][data-state=\"ok\"]')", 30)
        height = await page.evaluate("document.getElementById('svc-attrs').getBoundingClientRect().bottom + 24")
        data = await page.send("Page.captureScreenshot", format="png",
                               clip={"x": 0, "y": 0, "width": 1200, "height": height, "scale": 1})
        (out / "gateway-service.png").write_bytes(base64.b64decode(data["data"]))
        await page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs"))
    args = parser.parse_args()
    realm = "home-" + uuid.uuid4().hex[:4]
    settings = meshrpc.config.copy(HOST="127.0.0.1", REALM=realm, NS_AUTOREGISTER=False, RESOLVE="mesh")
    daemon = meshrpc.Daemon("127.0.0.1", settings=settings)
    daemon.register(Thermostat(), name="http.kitchen.thermostat", metadata={"thermo", "kitchen"})
    daemon.register(Sprinkler(), name="http.garden.sprinkler", metadata={"garden", "water"})
    daemon.register(Lights(), name="http.hall.lights", metadata={"lights", "hall"})
    daemon.register(Lights(), name="http.porch.lights", metadata={"lights", "porch"})
    daemon.register(Thermostat(), name="http.cellar.freezer", metadata={"thermo", "cellar"})
    daemon.register(Thermostat(), name="boiler.controller", metadata={"heating"})   # not exposed: view only
    threading.Thread(target=daemon.requestLoop, daemon=True).start()
    gateway = GatewayThread(settings)
    try:
        for path in ("http.kitchen.thermostat/temperature", "http.hall.lights/level"):
            request(f"{gateway.url}/pyro/{path}")
        post_json(f"{gateway.url}/pyro/http.porch.lights/switch", [True])
        asyncio.run(shoot(gateway.url, Path(args.out),
                          lambda: daemon.register(Lights(), name="http.front.doorbell", metadata={"door"})))
    finally:
        gateway.stop()
        daemon.shutdown()
    print(f"wrote {args.out}/gateway.png and {args.out}/gateway-service.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
