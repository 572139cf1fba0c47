"""The process's mesh on the host program's Zeroconf (`meshrpc.mesh.use_zeroconf`, docs/mesh.md),
as a Home Assistant integration must run it: the instance lives on the program's own event loop,
meshrpc publishes and resolves through it, another process hears the announcements and the
goodbyes, the instance keeps its interfaces, and closing the mesh leaves it running with the
program's own services. Real zeroconf on loopback, a real second process (`meshrpc browse --watch`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from subprocs import Runner, runner_for
from zeroconf import ServiceInfo, Zeroconf
from zeroconf.asyncio import AsyncZeroconf

import meshrpc
import meshrpc.aio
import meshrpc.mesh
from meshrpc import errors
from meshrpc.config import config

pytestmark = pytest.mark.timeout(60)

EXPECT = 20.0  # seconds for the other process to hear something


@meshrpc.expose
class Lamp:
    async def switch(self, on: bool) -> str:
        return "lamp on" if on else "lamp off"


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def test_the_mesh_runs_on_the_programs_zeroconf_and_leaves_it_running(fresh_mesh: None, realm: str,
                                                                      runner: Runner) -> None:
    settings = config.copy(REALM=realm, HOST="127.0.0.1")
    name = f"adopt.lamp.{realm}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        program = AsyncZeroconf(interfaces=["127.0.0.1"])  # the host program's, on its own loop (this one)
        zc = program.zeroconf
        own = ServiceInfo("_http._tcp.local.", f"{realm}._http._tcp.local.", port=8123,
                          addresses=[socket.inet_aton("127.0.0.1")], server=f"{realm}.local.")
        await program.async_register_service(own)
        moved: list[Any] = []

        async def update_interfaces(*args: Any, **kwargs: Any) -> None:  # the program's own stays callable
            moved.append(args)
        zc.async_update_interfaces = update_interfaces  # type: ignore[method-assign]
        meshrpc.mesh.use_zeroconf(program)

        watch = runner.meshrpc("browse", "--watch", "--json")  # another process, with a Zeroconf of its own
        await loop.run_in_executor(None, watch.expect, r'"event": "all-for-now"', EXPECT)
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
        daemon.register(Lamp(), name=name, metadata={"lamp"})
        async with daemon:
            async with meshrpc.aio.Proxy(f"PYRONAME:{name}", settings=settings) as lamp:
                assert await lamp.switch(True) == "lamp on"
            from meshrpc.mesh import discovery
            assert discovery.get_discovery()._zc is zc  # no Zeroconf of its own
            added = json.loads(await loop.run_in_executor(None, watch.expect, rf'"name": "{re.escape(name)}"', EXPECT))
            assert added["event"] == "added" and added["metadata"] == ["lamp"], added
            # a user of the mesh that needs another interface: the program's instance keeps its own
            discovery.get_discovery().zeroconf(object(), lambda: ["127.0.0.1", "127.0.0.2"])
        removed = json.loads(await loop.run_in_executor(
            None, watch.expect, rf'"event": "removed".*"name": "{re.escape(name)}"', EXPECT))
        assert removed["cause"] == "goodbye", removed
        assert moved == [], "the mesh changed the interfaces of the program's Zeroconf"  # (the loop ran meanwhile)

        # the mesh's close (waited for on another thread: the instance runs on this loop)
        await loop.run_in_executor(None, meshrpc.mesh.reset_for_tests)
        assert not zc.done, "the mesh closed the program's Zeroconf"
        assert zc.registry.async_get_info_name(own.key) is not None, "the program's own service was withdrawn"
        assert not [info.name for info in zc.registry.async_get_service_infos()
                    if info.type.lower() != own.type.lower()], "meshrpc left services in the program's Zeroconf"
        # ... and it still works for the program: another service registers and is answered
        later = ServiceInfo("_http._tcp.local.", f"{realm}-2._http._tcp.local.", port=8124,
                            addresses=[socket.inet_aton("127.0.0.1")], server=f"{realm}.local.")
        await program.async_register_service(later)
        await program.async_close()
        watch.stop()

    asyncio.run(main())


def test_use_zeroconf_after_the_mesh_started_its_own_says_when_to_call_it(fresh_mesh: None, realm: str) -> None:
    from meshrpc.mesh import get_registry
    registry = get_registry(config.copy(REALM=realm, HOST="127.0.0.1"))
    assert registry.lookup("nothing.here") == []  # the first lookup starts the mesh's own Zeroconf
    program = Zeroconf(interfaces=["127.0.0.1"])
    try:
        with pytest.raises(errors.ConfigError, match=r"before the first publish or lookup"):
            meshrpc.mesh.use_zeroconf(program)
        with pytest.raises(errors.ConfigError, match=r"takes a zeroconf.Zeroconf"):
            meshrpc.mesh.use_zeroconf("zeroconf")
    finally:
        program.close()


def test_a_closed_program_zeroconf_is_a_clear_naming_error(fresh_mesh: None, realm: str) -> None:
    program = Zeroconf(interfaces=["127.0.0.1"])
    program.close()
    meshrpc.mesh.use_zeroconf(program)
    from meshrpc.mesh import get_registry
    with pytest.raises(errors.NamingError, match=r"given to meshrpc.mesh.use_zeroconf\(\) was closed"):
        get_registry(config.copy(REALM=realm, HOST="127.0.0.1")).lookup("anything")
