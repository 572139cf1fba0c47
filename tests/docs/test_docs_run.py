"""Docs as tests: every page's code blocks run as a reader would run them (tools/docrun.py; the
marking convention is in docs/README.md). A page that no longer matches the code fails here, and the
failure names the page and the line of the block."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import docrun  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("page", docrun.pages(), ids=lambda p: str(p.relative_to(docrun.REPO)))
def test_page_runs(page: Path) -> None:
    try:
        docrun.run_page(page)
    except docrun.DocError as exc:
        pytest.fail(str(exc), pytrace=False)


# --- the harness itself: failures point at the page and line, markers are checked

def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def _failure(path: Path) -> str:
    with pytest.raises(docrun.DocError) as info:
        docrun.run_page(path)
    return str(info.value)


def test_a_failing_block_names_page_and_line(tmp_path: Path) -> None:
    path = _page(tmp_path, "# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nx = 1\nassert x == 2, 'x is 1'\n```\n")
    message = _failure(path)
    assert message.startswith(f"{path}:10: the Python block failed"), message
    assert f'File "{path}", line 11' in message and "x is 1" in message


def test_shell_exports_reach_later_blocks(tmp_path: Path) -> None:
    path = _page(tmp_path, "```sh\nexport GREETING=hi\n```\n\n```python\nimport os\n"
                           "print(os.environ['GREETING'])\n```\n\n<!-- doctest: output -->\n```text\nhi\n```\n\n"
                           "```sh\ntest \"$GREETING\" = hi\nfalse\n```\n")
    message = _failure(path)
    assert message.startswith(f"{path}:16: the shell block (exit 1) failed"), message
    assert "line 17: false" in message


def test_output_blocks_are_compared(tmp_path: Path) -> None:
    path = _page(tmp_path, "```python\nprint('hello, world')\n```\n\n<!-- doctest: output -->\n"
                           "```text\nhello, ...!\n```\n")
    assert "the output shown differs" in _failure(path)


def test_markers_are_checked(tmp_path: Path) -> None:
    assert "without a language" in _failure(_page(tmp_path, "```\nls\n```\n"))
    assert "needs a reason" in _failure(_page(tmp_path, "<!-- doctest: skip -->\n```sh\nfalse\n```\n"))
    assert "unknown doctest option 'backgrund'" in _failure(_page(tmp_path, "<!-- doctest: backgrund -->\n"
                                                                            "```sh\ntrue\n```\n"))
    docrun.run_page(_page(tmp_path, "<!-- doctest: skip: shows a failure -->\n```sh\nfalse\n```\n\n"
                                    "<!-- doctest: fails -->\n```python\nraise SystemExit(3)\n```\n"))


def test_a_server_left_in_the_foreground_is_named(tmp_path: Path) -> None:
    path = _page(tmp_path, "<!-- doctest: timeout=1 -->\n```python\nimport time\ntime.sleep(60)\n```\n")
    assert "mark it `<!-- doctest: background -->`" in _failure(path)


def test_background_blocks_wait_for_ready_and_files_are_saved(tmp_path: Path) -> None:
    path = _page(tmp_path, "```python\n# server.py\nimport time\nprint('up', flush=True)\ntime.sleep(60)\n```\n\n"
                           "<!-- doctest: background ready=up -->\n```sh\npython3 server.py\n```\n\n"
                           "```sh\ntest -f server.py\n```\n")
    docrun.run_page(path)


# --- a reader saves each Python block to a file of its own and runs it (w11-newcomer: docs/clients.md's
# later blocks used `meshrpc` and `cart` from earlier ones and passed here, in one shared interpreter)

def test_a_block_using_a_name_from_an_earlier_block_is_named(tmp_path: Path) -> None:
    path = _page(tmp_path, "```python\nimport json\ncart = 1\n```\n\n```python\nprint(json.dumps(cart))\n```\n")
    message = _failure(path)
    assert message.startswith(f"{path}:7: the Python block uses cart, json without importing"), message


def test_a_name_used_only_in_a_function_that_never_runs_counts(tmp_path: Path) -> None:
    path = _page(tmp_path, "```python\ndef check(data):\n    return data == expected_token\n```\n")
    assert "uses expected_token without" in _failure(path)


def test_each_python_block_is_a_program_of_its_own(tmp_path: Path) -> None:
    # no names are checked here: the state is a module attribute, which only running the block finds
    path = _page(tmp_path, "```python\nimport json\njson.shared = 1\n```\n\n"
                           "```python\nimport json\nassert getattr(json, 'shared', None) is None, 'shared'\n```\n")
    docrun.run_page(path)


def test_a_block_whose_program_does_not_exit_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docrun, "EXIT_TIMEOUT", 1.0)
    path = _page(tmp_path, "```python\nimport threading\nstop = threading.Event()\n"
                           "threading.Thread(target=stop.wait).start()\nprint('started')\n```\n")
    message = _failure(path)
    assert "ran to its end, but its program did not exit" in message and "started" in message, message
