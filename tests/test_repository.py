"""The repository stands on its own: its code, comments, OpenAPI text, tests and docs
never send a reader to a document outside it (a brief that lives beside the checkout
is a dead link in every clone)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("DESIGN" + ".md", "../" + "shared/")


def test_nothing_points_outside_the_repository() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in listed:
        path = ROOT / name
        if path.suffix in {".png", ".svg", ".ico"} or "/vendor/" in name or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
    assert found == []
