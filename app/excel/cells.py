"""Values a spreadsheet program must never run: text that starts with ``=``, ``+``,
``-`` or ``@`` (or a tab / carriage return before them) is a formula to Excel and
LibreOffice — CSV injection (OWASP). Exports write such values as text."""

from __future__ import annotations

from typing import Any

from openpyxl.cell import WriteOnlyCell
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def looks_like_formula(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_START)


def csv_safe(value: Any) -> Any:
    """A CSV cell: formula-looking text gets a leading apostrophe, which spreadsheet
    programs show as text and do not evaluate."""
    return f"'{value}" if looks_like_formula(value) else value


def text_cell(ws: WriteOnlyWorksheet, value: Any) -> WriteOnlyCell:
    """A write-only cell that keeps formula-looking text as text (openpyxl would store a
    string starting with ``=`` as a formula)."""
    cell = WriteOnlyCell(ws, value=value)
    if looks_like_formula(value):
        cell.data_type = "s"
    return cell
