"""Every public module-level number has one of the homes docs/architecture.md names ("Where constants
live"): Settings (config.py), limits.py, wire/constants.py. A new one elsewhere fails here: move it, or
add it below with the reason it stays where it is."""

from __future__ import annotations

import ast
from pathlib import Path

import meshrpc

PACKAGE = Path(meshrpc.__file__).parent
HOMES = {"config.py", "limits.py", "wire/constants.py"}
# (module, name): why it stays next to its user
STAYS = {
    ("wire/session.py", "SEQ_MASK"): "the header's 16-bit seq field, for its one user",
    ("wire/plain.py", "MAX_DEPTH"): "a parameter of plain's check (deeper values go to serpent)",
    ("protocol.py", "COMPRESSION_MIN_SIZE"): "Pyro5's SendingMessage rule, in Pyro5's module face",
    ("socketutil.py", "ROUTE_PROBE_PORT"): "the route probe's detail (no packet is sent)",
    ("cli/reference.py", "WIDTH"): "the generated CLI reference's layout",
    ("cli/demo.py", "CARRY_ON_CALLS"): "the demo's script",
}


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.BinOp):
        return _is_number(node.left) and _is_number(node.right)
    if isinstance(node, ast.UnaryOp):
        return _is_number(node.operand)
    return False


def public_numbers() -> set[tuple[str, str]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).as_posix()
        if module in HOMES:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            value = node.value
            for target in targets:
                if (isinstance(target, ast.Name) and target.id.isupper() and not target.id.startswith("_")
                        and value is not None and _is_number(value)):
                    found.add((module, target.id))
    return found


def test_public_numbers_live_in_their_homes() -> None:
    strays = sorted(public_numbers() - set(STAYS))
    assert not strays, f"move these to config.py Settings, limits.py or wire/constants.py (or list why not): {strays}"


def test_the_list_of_exceptions_is_current() -> None:
    gone = sorted(set(STAYS) - public_numbers())
    assert not gone, f"no longer module numbers, drop them from STAYS: {gone}"


def _home_numbers() -> dict[str, tuple[str, float]]:
    """name -> (home module, value) of every module-level number in wire/constants.py and limits.py."""
    found: dict[str, tuple[str, float]] = {}
    for module in ("wire/constants.py", "limits.py"):
        for node in ast.parse((PACKAGE / module).read_text()).body:
            if isinstance(node, ast.Assign) and _is_number(node.value):
                value = ast.literal_eval(node.value) if isinstance(node.value, ast.Constant) else None
                for target in node.targets:
                    if isinstance(target, ast.Name) and value is not None:
                        found[target.id] = (module, value)
    return found


def settings_restatements(source: str | None = None) -> list[str]:
    """Settings fields (in config.py, or source) whose default is a number written out again where a home
    already names it: the same value under a name with all of the field's words (NS_PORT's 9090 is
    NS_DEFAULT_PORT's)."""
    homes = _home_numbers()
    tree = ast.parse(source if source is not None else (PACKAGE / "config.py").read_text())
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    found = []
    for node in settings.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(node.value, ast.Call)):
            continue
        field = node.target.id
        for keyword in node.value.keywords:
            if keyword.arg != "default" or not _is_number(keyword.value):
                continue
            value = ast.literal_eval(keyword.value) if isinstance(keyword.value, ast.Constant) else None
            words = set(field.split("_"))
            for name, (module, home_value) in homes.items():
                if home_value == value and (words <= set(name.split("_")) or set(name.split("_")) <= words):
                    found.append(f"Settings.{field} = {value!r} restates {module}'s {name}: default={name}")
    return found


def test_settings_defaults_do_not_restate_a_home() -> None:
    restated = settings_restatements()
    assert not restated, f"use the home's name as the default: {restated}"


def test_the_restatement_check_sees_one() -> None:
    source = (PACKAGE / "config.py").read_text()
    assert "default=NS_DEFAULT_PORT" in source
    restated = settings_restatements(source.replace("default=NS_DEFAULT_PORT", "default=9090"))
    assert restated == ["Settings.NS_PORT = 9090 restates wire/constants.py's NS_DEFAULT_PORT: default=NS_DEFAULT_PORT"]
