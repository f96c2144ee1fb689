"""Tools the suite drives that are not Python packages (Chromium, Node, LibreOffice,
promtool): what to do when one is missing.

On a developer's machine a missing tool skips its tests with the reason. Under
``CI=true`` (``.ci/run`` sets it, and installs every one of them) it fails instead: a
skip there would quietly hide the tests that need it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CI=true`` (set by ``.ci/run`` and by CI services)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_tool(reason: str) -> NoReturn:
    """Skip with ``reason`` — or, in CI, fail with it."""
    if in_ci():
        pytest.fail(f"{reason}; with CI=true these tests must run, not skip", pytrace=False)
    pytest.skip(reason)
