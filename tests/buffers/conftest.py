"""Fixtures for the buffer tests: a private, empty Minari root per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Minari root in tmp_path, set as MINARI_DATASETS_PATH for this test only."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root
