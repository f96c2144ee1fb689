"""Every text batchd writes into a workbook or a CSV file passes through here, so that no
value a user typed can break a download for someone else.

- XML 1.0 cannot hold control characters (other than tab, line feed and carriage
  return), lone surrogates or U+FFFE/U+FFFF: openpyxl raises ``IllegalCharacterError``
  (or ``UnicodeEncodeError``) for them while it writes, and Excel refuses a file that
  holds them. They are written as U+FFFD (the replacement character), so the reader
  sees that something was there.
- Text that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab / carriage return before
  them) is a formula to Excel and LibreOffice — CSV injection (OWASP). Exports write
  such values as text.
"""

from __future__ import annotations

import re
from typing import Any

from openpyxl.cell import WriteOnlyCell
from openpyxl.comments import Comment
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet.datavalidation import DataValidation

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
REPLACEMENT = "\ufffd"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def looks_like_formula(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_START)


def xml_text(text: str) -> str:
    """``text`` with each character XML cannot hold replaced by U+FFFD."""
    return _NOT_XML.sub(REPLACEMENT, text)


def xml_value(value: Any) -> Any:
    """A cell value as it can be written to a workbook (only text changes)."""
    return xml_text(value) if isinstance(value, str) else value


def csv_safe(value: Any) -> Any:
    """A CSV cell: formula-looking text gets a leading apostrophe, which spreadsheet
    programs show as text and do not evaluate; a lone surrogate (which no UTF-8 encoder
    takes, so the download would stop there) becomes U+FFFD. Control characters stay:
    CSV holds them."""
    if not isinstance(value, str):
        return value
    value = _LONE_SURROGATE.sub(REPLACEMENT, value)
    return f"'{value}" if looks_like_formula(value) else value


def text_cell(ws: WriteOnlyWorksheet, value: Any) -> WriteOnlyCell:
    """A write-only cell that any workbook can hold: text cleaned by ``xml_text``, and
    formula-looking text kept as text (openpyxl would store a string starting with
    ``=`` as a formula)."""
    cell = WriteOnlyCell(ws, value=xml_value(value))
    if looks_like_formula(value):
        cell.data_type = "s"
    return cell


def comment(text: str, author: str, *, width: int, height: int) -> Comment:
    """A cell comment (its text is XML too)."""
    return Comment(xml_text(text), author, width=width, height=height)


def validation(**options: Any) -> DataValidation:
    """A data validation whose messages (built from form labels and options) are
    written as XML attributes: cleaned like cell text."""
    return DataValidation(**{k: xml_value(v) for k, v in options.items()})
