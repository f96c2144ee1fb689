"""Operation types. A type is one module in this package (or in a user's own package):
it declares an ``Operation`` subclass — params, target, lock, effect — and calls
``register``. Importing this package imports every module in it, then every module
or object named by a ``batchd.operations`` entry point, so adding a type edits no list.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points

from app.domain import BatchRun, WorkItem
from app.operations.registry import OPERATIONS, Operation, get_operation, register

log = logging.getLogger("batchd.operations")

_SEAMS = {"registry", "item_locks", "targets", "pipeline", "pipeline_sql"}
"""Modules of this package that hold the machinery, not types."""


def _import_builtin_types() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SEAMS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def load_plugins(group: str = "batchd.operations") -> list[str]:
    """Load third-party types: each entry point names a module that registers its types
    on import, or an ``Operation`` subclass or instance to register. Returns the names
    loaded; one that fails to load is logged and skipped (the service still starts)."""
    loaded = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Operation):
                register(obj())
            elif isinstance(obj, Operation):
                register(obj)
            loaded.append(ep.name)
        except Exception:
            log.exception("could not load operation plugin %s (%s)", ep.name, ep.value)
    return loaded


_import_builtin_types()
load_plugins()

__all__ = [
    "OPERATIONS",
    "BatchRun",
    "Operation",
    "WorkItem",
    "get_operation",
    "load_plugins",
    "register",
]
