"""Prometheus metrics (issue 11 fills this in). The batch engine calls these hooks; they
cost nothing when metrics are off."""

from __future__ import annotations

from collections.abc import Mapping


def chunk_done(op_type: str, seconds: float, counts: Mapping[str, int]) -> None:
    """One chunk finished: how long it took (claim to commit) and its items by outcome."""
