"""Form and node rules: field modes per node, required fields, and value
checks with messages a user understands. Shared by approval, the node view, definition
validation and (later) the Excel template."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

FIELD_TYPES = ("text", "number", "date", "select", "multiselect", "bool")
FIELD_MODES = ("hidden", "read", "write")
TRUE_WORDS = {"true", "yes", "1", "y"}
FALSE_WORDS = {"false", "no", "0", "n"}


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": ["form_data", self.field], "msg": self.message}


def field_mode(node: dict[str, Any], name: str) -> str:
    """A field not named in the node's ``fields`` is ``read``."""
    mode = (node.get("fields") or {}).get(name, "read")
    return mode if mode in FIELD_MODES else "read"


@dataclass
class NodeRules:
    """Everything approval needs to know about one node, computed once per chunk."""

    node: dict[str, Any]
    fields: dict[str, dict[str, Any]]
    writable: set[str] = field(default_factory=set)
    required: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, form: list[dict[str, Any]], node: dict[str, Any]) -> NodeRules:
        fields = {f["name"]: f for f in form}
        writable = {n for n in fields if field_mode(node, n) == "write"}
        required = set(node.get("required") or []) | {
            n for n, f in fields.items() if f.get("required") and n in writable
        }
        return cls(node=node, fields=fields, writable=writable, required=required)

    def label(self, name: str) -> str:
        f = self.fields.get(name)
        return str(f.get("label") or name) if f else name

    def merge(
        self, current: dict[str, Any], update: dict[str, Any]
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """Check ``update`` against this node and merge it into ``current``.

        Only ``write`` fields may change; values are type- and option-checked and
        normalised; every required field must have a value afterwards.
        """
        errors: list[FieldError] = []
        merged = dict(current)
        for name, value in update.items():
            spec = self.fields.get(name)
            if spec is None:
                errors.append(FieldError(name, f"{name} is not a field of this form"))
                continue
            if name not in self.writable:
                errors.append(
                    FieldError(name, f"{self.label(name)} cannot be changed at this step")
                )
                continue
            ok, normalised, message = check_value(spec, value)
            if not ok:
                errors.append(FieldError(name, message))
            else:
                merged[name] = normalised
        flagged = {e.field for e in errors}
        for name in sorted(self.required - flagged):
            if name in self.fields and is_empty(merged.get(name)):
                errors.append(FieldError(name, f"{self.label(name)} is required"))
        return merged, errors


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == []


NUMBER_MAX = 2**63 - 1
"""The largest magnitude a number field holds (a BIGINT), so every backend, the Excel
round trip and a later SQL cast can store and compare it exactly."""
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _check_number(label: str, value: Any) -> tuple[bool, Any, str]:
    """A JSON number or numeric text → int (when whole) or float. NaN, ±Infinity, text
    that overflows a float ("1e999") and magnitudes beyond ``NUMBER_MAX`` are refused
    here: PostgreSQL cannot store NaN/Infinity in JSON, and they would fail later."""
    number: int | float
    if isinstance(value, bool):
        return False, None, f"{label} must be a number"
    if isinstance(value, (int, float)):
        number = value
    else:
        text = str(value).strip()
        if len(text) > 100:
            return False, None, f"{label} must be a number"
        try:
            number = int(text) if _INTEGER.fullmatch(text) else float(text)
        except ValueError:
            return False, None, f"{label} must be a number"
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            number = int(number)
    if isinstance(number, float) and not math.isfinite(number):
        return False, None, f"{label} must be a finite number"
    if abs(number) > NUMBER_MAX:
        return False, None, f"{label} must be between -{NUMBER_MAX} and {NUMBER_MAX}"
    return True, number, ""


def check_value(spec: dict[str, Any], value: Any) -> tuple[bool, Any, str]:
    """Validate and normalise one value. Returns (ok, normalised value, error message)."""
    label = spec.get("label") or spec["name"]
    kind = spec.get("type", "text")
    if is_empty(value):
        return True, None, ""
    if isinstance(value, float) and not math.isfinite(value):
        return False, None, f"{label} must be a finite number"
    options = [str(o) for o in spec.get("options") or []]
    if kind == "text":
        if isinstance(value, (dict, list)):
            return False, None, f"{label} must be text"
        return True, str(value), ""
    if kind == "number":
        return _check_number(label, value)
    if kind == "date":
        if isinstance(value, datetime):
            return True, value.date().isoformat(), ""
        if isinstance(value, date):
            return True, value.isoformat(), ""
        try:
            return True, date.fromisoformat(str(value).strip()[:10]).isoformat(), ""
        except ValueError:
            return False, None, f"{label} must be a date (YYYY-MM-DD)"
    if kind == "select":
        if str(value) not in options:
            return False, None, f"{label} must be one of {', '.join(options)}"
        return True, str(value), ""
    if kind == "multiselect":
        values = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
        bad = [str(v) for v in values if str(v) not in options]
        if bad:
            return False, None, f"{label} must be chosen from {', '.join(options)}"
        return True, [str(v) for v in values], ""
    if kind == "bool":
        if isinstance(value, bool):
            return True, value, ""
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True, True, ""
        if word in FALSE_WORDS:
            return True, False, ""
        return False, None, f"{label} must be yes or no"
    return False, None, f"{label} has an unknown type {kind}"


def find_node(nodes: list[dict[str, Any]], node_id: str) -> tuple[int, dict[str, Any]] | None:
    for i, node in enumerate(nodes):
        if node.get("id") == node_id:
            return i, node
    return None
