"""Markers by folder, so `pytest -m "not e2e"` works without decorating anything."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(item.fspath).relative_to(HERE).parts
        if parts and parts[0] in ("integration", "e2e", "ha"):
            item.add_marker(getattr(pytest.mark, parts[0]))
