"""Garbage-collector settings for long-running job processes (``batchd worker``,
``batchd serve``).

A chunk allocates thousands of short-lived objects (rows, dicts, outcomes), so the
default gen-0 threshold of 700 triggers collections many times per chunk, and every
full collection walks all the long-lived objects of the framework. Freezing what
start-up created and raising the thresholds cut the worker's CPU per approved item by
about 8% in ``make bench`` (memory: +10 MB). Reference cycles are still collected.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def tune_for_batches() -> None:
    """Call once, after start-up (imports, connections) is done."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
