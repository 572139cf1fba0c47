"""What `meshrpc describe` shows of a class (server/decorators.describe_members), without sockets.

This module uses `from __future__ import annotations` on purpose: its annotations are strings, as in
many servers (meshrpc's own echo server among them), and describe must show them as written."""

from __future__ import annotations

from typing import Any, Iterator

from meshrpc.server.decorators import describe_members, expose, oneway


@expose
class Lamp:
    """A lamp."""

    def turn(self, on: bool, fade: float = 0.0) -> str:
        """Switch it."""
        return "on" if on else "off"

    def echo(self, message: Any, *more: Any, loud: bool = False) -> Any:
        return message

    def count(self, upto: int | None = None) -> Iterator[int]:
        yield from range(upto or 3)

    def plain(self, a, b=2):
        return a + b

    @oneway
    def blink(self) -> None:
        pass


def test_string_annotations_are_shown_as_written_not_quoted() -> None:
    methods = describe_members(Lamp)["methods"]
    assert methods["turn"]["signature"] == "(on: bool, fade: float = 0.0) -> str"
    assert methods["echo"]["signature"] == "(message: Any, *more: Any, loud: bool = False) -> Any"
    assert methods["count"]["signature"] == "(upto: int | None = None) -> Iterator[int]"
    assert all("'" not in method["signature"] for method in methods.values())


def test_self_is_left_out_and_flags_and_docs_are_kept() -> None:
    described = describe_members(Lamp())
    assert described["class"] == "Lamp" and described["doc"] == "A lamp."
    assert described["methods"]["plain"]["signature"] == "(a, b=2)"
    assert described["methods"]["blink"] == {"signature": "() -> None", "doc": "", "oneway": True,
                                             "idempotent": False}
    assert described["methods"]["turn"]["doc"] == "Switch it."
