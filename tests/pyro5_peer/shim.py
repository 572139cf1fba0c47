"""A pytest plugin that makes `import Pyro5...` load meshrpc, to run Pyro5's own test suite against it.

Loaded with `-p tests.pyro5_peer.shim` in a separate pytest process (tests/interop/test_pyro5_peer.py):
it must be in place before the suite's modules are imported, and the real Pyro5 must never be loaded
in that process. Each Pyro5 module name maps to the meshrpc module that holds the same public names.
Pyro5 modules with server internals that meshrpc does not have (svr_threads, svr_multiplex) become
empty placeholders so that a test file importing them still collects; the tests that use them are
deselected as internal (see suite.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types

#: Pyro5 module -> the meshrpc module with the same public names
MODULES = {
    "Pyro5.api": "meshrpc",
    "Pyro5.errors": "meshrpc.errors",
    "Pyro5.core": "meshrpc.core",
    "Pyro5.client": "meshrpc.client",
    "Pyro5.server": "meshrpc.server",
    "Pyro5.callcontext": "meshrpc.context",
    "Pyro5.socketutil": "meshrpc.socketutil",
    "Pyro5.protocol": "meshrpc.protocol",
    "Pyro5.serializers": "meshrpc.serializers",
    "Pyro5.nameserver": "meshrpc.nameserver",
    "Pyro5.configure": "meshrpc.config",
    "Pyro5.utils.echoserver": "meshrpc.cli.echo",
}
#: Pyro5's private names that tests use, and meshrpc's public counterpart ("module:attribute")
PRIVATE_NAMES = {
    "Pyro5.client": {"_StreamResultIterator": "meshrpc.client.proxy:StreamResultIterator"},
}
#: Pyro5 internals meshrpc has no counterpart of: importable, empty
PLACEHOLDERS = ("Pyro5.svr_threads", "Pyro5.svr_multiplex", "Pyro5.svr_existingconn", "Pyro5.nsc")


class _Placeholder:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("a Pyro5 server internal; meshrpc has no counterpart (deselected as internal)")


def _submodule(attribute: str) -> types.ModuleType:
    """`Pyro5.nameserver` after `import Pyro5.api`: importing Pyro5.api loads Pyro5's modules, so programs use
    them as attributes of the package without importing them (Pyro5's eventloop example does)."""
    if f"Pyro5.{attribute}" not in MODULES:
        raise AttributeError(f"module 'Pyro5' has no attribute {attribute!r}")
    return importlib.import_module(f"Pyro5.{attribute}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MODULES or fullname in PLACEHOLDERS or fullname in ("Pyro5", "Pyro5.utils"):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in ("Pyro5", "Pyro5.utils"))
        if fullname.startswith("Pyro5."):
            raise ModuleNotFoundError(f"{fullname}: no meshrpc counterpart (not part of the public API it maps)")
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        name = spec.name
        if name in MODULES:
            module = importlib.import_module(MODULES[name])
            for private, target in PRIVATE_NAMES.get(name, {}).items():
                owner, _, attribute = target.partition(":")
                if not hasattr(module, private):
                    setattr(module, private, getattr(importlib.import_module(owner), attribute))
            return module
        module = types.ModuleType(name)
        module.__path__ = []  # type: ignore[attr-defined]
        if name == "Pyro5":

            import meshrpc
            # the suite checks the version of the package it tests: the Pyro5 release it came with
            module.__version__ = importlib.metadata.version("Pyro5")  # type: ignore[attr-defined]
            module.config = meshrpc.config  # type: ignore[attr-defined]
            module.__getattr__ = _submodule  # type: ignore[attr-defined]
        elif name in PLACEHOLDERS:
            module.__getattr__ = lambda attr: _Placeholder  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    if any(name == "Pyro5" or name.startswith("Pyro5.") for name in sys.modules):
        raise RuntimeError("the real Pyro5 is already imported; the shim must be loaded first")
    sys.meta_path.insert(0, _Finder())


install()


# --------------------------------------------------------------------------- pytest hooks

def pytest_collection_modifyitems(config: object, items: list) -> None:
    """Leave out the tests that are not about the public API or would use the real network; mark the
    deliberate differences as strict xfails (so one that starts to pass is noticed)."""
    import pytest

    from . import selection
    kept, dropped = [], []
    for item in items:
        if selection.matches(item.nodeid, selection.NOT_PUBLIC) or selection.matches(item.nodeid, selection.OFF_MACHINE):
            dropped.append(item)
            continue
        reason = selection.matches(item.nodeid, selection.DIFFERENCES)
        if reason:
            item.add_marker(pytest.mark.xfail(reason="deliberate difference: " + reason, strict=True))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)  # type: ignore[attr-defined]
        items[:] = kept


def pytest_runtest_setup(item: object) -> None:
    """test_naming binds name servers on "the machine's external address"; here that is loopback, so
    nothing (broadcast lookups included) reaches the real network."""
    import ipaddress

    import meshrpc.socketutil
    real = getattr(meshrpc.socketutil.get_ip_address, "real", meshrpc.socketutil.get_ip_address)
    if not getattr(item, "nodeid", "").removeprefix("tests/").startswith("test_naming.py"):
        meshrpc.socketutil.get_ip_address = real  # type: ignore[assignment]
        return

    def loopback_for_external(hostname: str, workaround127: bool = False, version: int | None = None) -> object:
        if workaround127 and not hostname:
            return ipaddress.ip_address("127.0.0.1")
        return real(hostname, workaround127, version)

    loopback_for_external.real = real  # type: ignore[attr-defined]
    meshrpc.socketutil.get_ip_address = loopback_for_external  # type: ignore[assignment]


def pytest_ignore_collect(collection_path: object, config: object) -> bool | None:
    """Whole test files of Pyro5 parts meshrpc does not map are not even imported."""
    from . import selection
    name = getattr(collection_path, "name", "")
    return True if name in selection.NOT_PUBLIC else None
