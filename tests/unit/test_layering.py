"""The layering the code relies on: wire/ is sans-I/O, server/ imports neither client/, mesh/ nor
naming/ (they plug into server/hooks.py), so no import cycle runs through the daemon."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "meshrpc"


def imported_packages(path: Path) -> set[str]:
    """The meshrpc sub-packages/modules a file imports (relative imports resolved), at any depth."""
    found: set[str] = set()
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            names = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("meshrpc."):
                found.add(name.split(".")[1])
    return found


def test_server_imports_neither_client_mesh_nor_naming() -> None:
    for path in sorted((PACKAGE / "server").glob("*.py")):
        assert not imported_packages(path) & {"client", "mesh", "naming", "resolve", "aio"}, path.name


def test_wire_is_sans_io() -> None:
    for path in sorted((PACKAGE / "wire").glob("*.py")):
        assert not imported_packages(path) & {"transport", "client", "server", "mesh", "naming", "resolve",
                                              "aio"}, path.name
        imports = {alias.name for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import) for alias in node.names}
        assert not imports & {"socket", "select", "selectors", "asyncio"}, path.name
        if path.name == "session.py":  # the session: no threads, no clock, no logging either
            assert not imports & {"threading", "time", "logging"}
