"""Shared fixtures: a weights cache for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Train each model at most once per session (or reuse ``SPLITLAB_CACHE``)."""
    previous = os.environ.get("SPLITLAB_CACHE")
    cache = Path(previous) if previous else tmp_path_factory.mktemp("cache")
    os.environ["SPLITLAB_CACHE"] = str(cache)
    yield cache
    if previous is None:
        del os.environ["SPLITLAB_CACHE"]
