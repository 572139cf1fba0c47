"""The gateway's web page in a real headless Chromium (driven over the DevTools protocol): it shows a
daemon appear and disappear without a reload, and a method called through its form shows the result
and a remote traceback. Screenshots go to the directory this test prints ($MESHRPC_TEST_ARTIFACTS in CI)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_home import Sprinkler, Thermostat
from gateway_support import GatewayThread
from subprocs import Runner, runner_for

import meshrpc
from cdp import Browser, artefact_dir, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def row_exists(name: str) -> str:
    return f"!!document.querySelector('tr[data-name={json.dumps(name)}]')"


@pytest.mark.timeout(180)
def test_page_shows_the_mesh_live_and_calls_a_method(realm: str, start_daemon: Any, runner: Runner) -> None:
    settings = meshrpc.config.copy(HOST="127.0.0.1", REALM=realm, NS_AUTOREGISTER=False, RESOLVE="mesh")
    home = start_daemon(settings=settings)
    home.register(Thermostat(), name="http.kitchen.thermostat", metadata={"thermo", "kitchen"})
    home.register(Sprinkler(), name="http.garden.sprinkler", metadata={"garden", "water"})
    home.register(Sprinkler(), name="hall.lights", metadata={"lights"})      # listed, not callable
    gateway = GatewayThread(settings)
    shots = artefact_dir("gateway-browser")
    print(f"\nscreenshots: {shots}")
    try:
        asyncio.run(drive(gateway.url, runner, shots))
    finally:
        gateway.stop()


async def drive(url: str, runner: Runner, shots: Any) -> None:
    assert CHROMIUM is not None
    async with Browser(CHROMIUM) as browser:
        page = await browser.page()
        await page.goto(url + "/")
        await page.wait_for("document.getElementById('status').dataset.state === 'live'", 30, "the live status")
        await page.wait_for("document.querySelectorAll('#services tbody tr').length === 3", 30, "three services")

        echo = runner.meshrpc("echo", "--name", "http.echo", "--tag", "echo", "--tag", "demo")
        echo.expect("echo server ready")
        await page.wait_for(row_exists("http.echo"), 30, "the new daemon's row")
        assert await page.evaluate("document.querySelector('tr[data-name=\"hall.lights\"]').textContent"
                                   ".includes('view only')")
        await page.screenshot(shots / "1-daemon-appeared.png")

        # tag filter: only the garden
        await page.evaluate("document.querySelector('#tag-filter [data-tag=\"garden\"]').click()")
        await page.wait_for("document.querySelectorAll('#services tbody tr').length === 1", 10, "the tag filter")
        await page.evaluate("document.querySelector('#tag-filter [data-tag=\"garden\"]').click()")

        # the service page: call echo through its form, then error (a remote traceback)
        await page.evaluate("location.hash = '#/s/http.echo'")
        await page.wait_for("!!document.querySelector('form[data-method=\"echo\"]')", 30, "the echo form")
        await page.evaluate("""(() => {
            const form = document.querySelector('form[data-method="echo"]');
            form.querySelector('input.args').value = '["hello from the browser"]';
            form.requestSubmit(); })()""")
        result = await page.wait_for(
            "(() => { const r = document.querySelector('.result[data-method=\"echo\"][data-state=\"ok\"]');"
            " return r && r.textContent; })()", 30, "the echo result")
        assert "hello from the browser" in result
        await page.evaluate("document.querySelector('form[data-method=\"error\"]').requestSubmit()")
        error = await page.wait_for(
            "(() => { const r = document.querySelector('.result[data-method=\"error\"][data-state=\"error\"]');"
            " return r && r.textContent; })()", 30, "the error result")
        assert "builtins.ValueError: this is the generated error from echoserver echo() method" in error and "remote traceback" in error
        await page.screenshot(shots / "2-service-page.png")

        await page.evaluate("location.hash = '#/'")
        await page.wait_for(row_exists("http.echo"), 10, "the list again")
        await page.wait_for("document.querySelector('tr[data-name=\"http.echo\"] td:last-child').textContent"
                            ".includes('ms')", 10, "the last call's latency")
        await page.screenshot(shots / "3-list-with-calls.png")

        echo.kill()                                  # kill -9: no goodbye; the mesh notices the silence
        await page.wait_for("!" + row_exists("http.echo"), 30, "the killed daemon's row gone")
        activity = await page.evaluate("document.getElementById('activity').textContent")
        assert "+ http.echo" in activity and "− http.echo" in activity
        await page.screenshot(shots / "4-daemon-left.png")
        assert page.errors == [], page.errors
        await page.close()


@pytest.mark.timeout(120)
def test_page_asks_for_the_gateway_key(realm: str, start_daemon: Any) -> None:
    settings = meshrpc.config.copy(HOST="127.0.0.1", REALM=realm, NS_AUTOREGISTER=False, RESOLVE="mesh")
    start_daemon(settings=settings).register(Thermostat(), name="http.kitchen.thermostat", metadata={"thermo"})
    gateway = GatewayThread(settings, key="let-me-in")
    shots = artefact_dir("gateway-browser-key")
    print(f"\nscreenshots: {shots}")

    async def drive() -> None:
        assert CHROMIUM is not None
        async with Browser(CHROMIUM) as browser:
            page = await browser.page()
            await page.goto(gateway.url + "/")
            await page.wait_for("!document.getElementById('keybar').hidden", 30, "the key prompt")
            await page.screenshot(shots / "1-key-prompt.png")
            await page.evaluate("""(() => { document.getElementById('keyinput').value = 'let-me-in';
                document.getElementById('keyform').requestSubmit(); })()""")
            await page.wait_for(row_exists("http.kitchen.thermostat"), 30, "the service once the key is given")
            assert await page.evaluate("document.getElementById('keybar').hidden")
            await page.evaluate("location.hash = '#/s/http.kitchen.thermostat'")
            await page.wait_for("!!document.querySelector('form[data-method=\"temperature\"]')", 30, "the forms")
            await page.evaluate("document.querySelector('form[data-method=\"temperature\"]').requestSubmit()")
            value = await page.wait_for(
                "(() => { const r = document.querySelector('.result[data-method=\"temperature\"][data-state=\"ok\"]');"
                " return r && r.textContent; })()", 30, "the attribute read with the key")
            assert "21.5" in value
            await page.screenshot(shots / "2-with-key.png")
            assert page.errors == [], page.errors
            await page.close()
    try:
        asyncio.run(drive())
    finally:
        gateway.stop()
