"""Generated documentation must match the code."""

from pathlib import Path

import pytest

from meshrpc.config import reference_markdown

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `meshrpc config --reference > docs/configuration.md`")
