"""What an uploaded workbook may hold, checked as each part streams — before openpyxl
reads any of it.

openpyxl builds whole parts in memory (the styles, the workbook, …), keeps every shared
string and an empty husk of every row it has read, and turns each style entry into a
few objects: a 563 KB upload whose styles.xml held 3 million entries took 2.6 GB and
51 s of CPU. So an upload is checked first, in this order:

- the zip itself: its central-directory records are counted before ``zipfile`` parses
  them into objects, then the members and their declared sizes are checked before
  anything is extracted (``zipfile`` never inflates a member past its declared size,
  so a declared size is a hard byte budget for that member);
- every member, streamed once through expat: the stdlib parser ElementTree and
  openpyxl use, driven through ``xml.parsers.expat`` because its handlers build
  nothing (``iterparse`` would build every element) and it reports a DOCTYPE the
  moment it appears. Each element is counted by what it is — rows and cells of a
  worksheet, shared strings, style entries, sheets, elements, depth — and the first
  limit crossed stops the read: a 413 naming the ``BATCH_…`` setting, or a 422 for XML
  no workbook holds (a DTD — so no entity is ever expanded — or absurd nesting). A
  member that is not XML (an image) costs one chunk.

openpyxl then reads the package through ``Package`` itself, which lets a part be read
whole only when it is small, and streamed only by a reader that drops what it has read
of that kind of part (openpyxl drops each row / shared string by its exact tag): what
was counted bounds what openpyxl can hold, whatever names a crafted package gives its
parts.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Literal, NoReturn, cast
from xml.parsers import expat

from openpyxl.reader.excel import ExcelReader
from openpyxl.xml.constants import ARC_CONTENT_TYPES, SHARED_STRINGS, SHEET_MAIN_NS

from app.config import Settings
from app.errors import TooLarge, ValidationFailed

WORKSHEET, ROW = f"{SHEET_MAIN_NS} worksheet", f"{SHEET_MAIN_NS} row"
STRINGS, STRING = f"{SHEET_MAIN_NS} sst", f"{SHEET_MAIN_NS} si"
CELL = f"{SHEET_MAIN_NS} c"
"""Matched with their namespace, as openpyxl's readers match the rows and strings they
drop. The lists below are matched by local name, as openpyxl reads them."""
STYLE_LISTS = {
    tag: label
    for tag, label in (
        ("cellXfs", "cell formats"),
        ("cellStyleXfs", "cell style formats"),
        ("fonts", "fonts"),
        ("fills", "fills"),
        ("borders", "borders"),
        ("numFmts", "number formats"),
        ("dxfs", "differential formats"),
        ("cellStyles", "cell styles"),
    )
}
WORKSHEETS = "xl/worksheets/"
"""Where every spreadsheet program puts the worksheets; only a member there may be as
large as ``BATCH_MAX_SHEET_BYTES`` (and only if it is a worksheet)."""
DEPTH_MAX = 64
"""The deepest XML a part may nest (a worksheet is ~7 levels, a chart ~20)."""
CHUNK = 64 * 1024
CENTRAL_DIRECTORY_RECORD = b"PK\x01\x02"

Kind = Literal["sheet", "strings"]


def too_large(detail: str) -> TooLarge:
    return TooLarge(detail, fields=[{"loc": ["file"], "msg": detail}])


def not_a_workbook(detail: str) -> ValidationFailed:
    return ValidationFailed(detail, fields=[{"loc": ["file"], "msg": detail}])


def too_many(where: str, limit: int, what: str, setting: str) -> TooLarge:
    return too_large(f"{where} holds more than {limit} {what} (BATCH_{setting}).")


def too_big(where: str, size: int, limit: int, setting: str) -> TooLarge:
    return too_large(
        f"{where} unpacks to {size} bytes; the limit is {limit} bytes (BATCH_{setting}). "
        "It was not extracted."
    )


@dataclass
class Budget:
    """What the rest of one upload may still hold (the workbooks of a zip included)."""

    settings: Settings
    bytes_left: int
    elements_left: int

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(settings, settings.max_uncompressed_bytes, settings.max_xml_elements)

    def spend_bytes(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise too_large(
                f"The upload would unpack to more than {self.settings.max_uncompressed_bytes} "
                "bytes (BATCH_MAX_UNCOMPRESSED_BYTES); it was not extracted."
            )

    def spend_elements(self, n: int) -> None:
        self.elements_left -= n
        if self.elements_left < 0:
            raise self.out_of_elements()

    def out_of_elements(self) -> TooLarge:
        return too_many(
            "The upload", self.settings.max_xml_elements, "XML elements", "MAX_XML_ELEMENTS"
        )


@dataclass(frozen=True)
class _Facts:
    """What the scan found in one member."""

    elements: int
    streams_as: Kind | None
    """A worksheet / the shared strings (within their limits): its root element."""


class Package(zipfile.ZipFile):
    """An uploaded zip (an .xlsx, a .zip of workbooks, or one workbook of that zip),
    refused at once past the member and size limits. ``workbook()`` scans every member
    and opens the workbook with openpyxl (read-only), whose every read then passes
    ``_check_read``. ``what`` names the package in messages ("the upload",
    "task-3.xlsx")."""

    def __init__(self, file: IO[bytes], budget: Budget, what: str) -> None:
        settings = budget.settings
        records = _central_directory_records(file)
        if records > settings.max_zip_members:
            raise _too_many_members(what, records, settings.max_zip_members)
        super().__init__(file)
        self.source = file
        self.budget = budget
        self.what = what
        self.facts: dict[str, _Facts] | None = None
        self.loading = False
        members = self.infolist()
        if len(members) > settings.max_zip_members:
            raise _too_many_members(what, len(members), settings.max_zip_members)
        budget.spend_bytes(sum(m.file_size for m in members))
        for m in members:
            limit, setting = _size_limit(settings, m.filename.startswith(WORKSHEETS))
            if m.file_size > limit:
                raise too_big(self.where(m), m.file_size, limit, setting)

    def where(self, member: zipfile.ZipInfo | str) -> str:
        name = member.filename if isinstance(member, zipfile.ZipInfo) else member
        return f"{name} in {self.what}"

    def scan(self) -> None:
        """Stream every member through the checks (once)."""
        if self.facts is not None:
            return
        facts: dict[str, _Facts] = {}
        strings: list[str] = []
        for m in self.infolist():
            if not m.is_dir():
                facts[m.filename] = self._scan(
                    m, strings if m.filename == ARC_CONTENT_TYPES else None
                )
        self.facts = facts
        for name in strings:  # what openpyxl's shared-strings reader will stream
            if name in facts and not (self._small(name) or facts[name].streams_as == "strings"):
                raise self._misnamed(name)

    def workbook(self) -> Any:
        """The workbook (openpyxl, read-only), every part of it scanned first and read
        through ``_check_read``; closing it closes this package."""
        self.scan()
        reader = ExcelReader(self.source, read_only=True, data_only=True, keep_links=False)
        reader.archive.close()  # the plain zip openpyxl opened: it reads through this one
        reader.archive, reader.valid_files = self, self.namelist()
        self.loading = True
        try:
            reader.read()
        finally:
            self.loading = False
        return reader.wb

    def open(
        self,
        name: str | zipfile.ZipInfo,
        mode: Literal["r", "w"] = "r",
        pwd: bytes | None = None,
        *,
        force_zip64: bool = False,
    ) -> IO[bytes]:
        raw = super().open(name, mode, pwd, force_zip64=force_zip64)
        if self.facts is None or mode != "r":
            return raw
        info = name if isinstance(name, zipfile.ZipInfo) else self.getinfo(name)
        return cast(IO[bytes], _Part(raw, self, info.filename))

    def _small(self, name: str) -> bool:
        assert self.facts is not None
        s = self.budget.settings
        facts = self.facts.get(name, _Facts(0, None))
        size = self.getinfo(name).file_size
        return facts.elements <= s.max_part_elements and size <= s.max_part_bytes

    def _check_read(self, name: str, whole: bool) -> None:
        """A part may be read whole only if it is small. A larger one may only be
        streamed by a reader that drops what it has read of it: while the workbook
        loads, openpyxl streams the shared strings (checked in ``scan``: a part with an
        ``sst`` root) and skims the worksheets for their size (dropping everything); after,
        it streams the rows of worksheets only (a part with a ``worksheet`` root)."""
        if self._small(name):
            return
        if whole:
            raise too_many(
                self.where(name),
                self.budget.settings.max_part_elements,
                "XML elements to be read at once",
                "MAX_PART_ELEMENTS",
            )
        assert self.facts is not None
        streams_as = self.facts[name].streams_as
        if streams_as == "sheet" or (self.loading and streams_as == "strings"):
            return
        raise self._misnamed(name)

    def _misnamed(self, name: str) -> ValidationFailed:
        return not_a_workbook(
            f"{self.where(name)} is not the kind of part the workbook names it as; "
            "the file is not a readable .xlsx workbook."
        )

    def _scan(self, member: zipfile.ZipInfo, strings: list[str] | None) -> _Facts:
        scan = _Scan(self.budget, self.where(member), member.file_size, strings)
        with super().open(member) as raw:
            try:
                while chunk := raw.read(CHUNK):
                    scan.parser.Parse(chunk, False)
                scan.parser.Parse(b"", True)
            except expat.ExpatError:
                pass  # not XML (an image), or broken XML: every XML reader stops here too
        scan.finish()
        self.budget.spend_elements(scan.elements)
        return _Facts(scan.elements, scan.streams_as)


def _size_limit(settings: Settings, worksheet: bool) -> tuple[int, str]:
    """The unpacked size a member may have: a worksheet is read as a stream, any other
    part whole (or not at all)."""
    if worksheet:
        return settings.max_sheet_bytes, "MAX_SHEET_BYTES"
    return settings.max_part_bytes, "MAX_PART_BYTES"


def _too_many_members(what: str, count: int, limit: int) -> TooLarge:
    return too_large(
        f"{what[:1].upper()}{what[1:]} holds {count} files; the limit is {limit} "
        "(BATCH_MAX_ZIP_MEMBERS)."
    )


def _central_directory_records(file: IO[bytes]) -> int:
    """The central-directory records in ``file``, counted by their signature without
    parsing them (``zipfile`` makes an object of each: a 20 MB upload could list
    400 000 empty members). A signature that happens to occur in compressed data is
    counted too: an over-count, never an under-count."""
    file.seek(0)
    count, tail = 0, b""
    while block := file.read(1 << 20):
        data = tail + block
        count += data.count(CENTRAL_DIRECTORY_RECORD)
        tail = data[-3:]
    file.seek(0)
    return count


class _Part(io.RawIOBase):
    """A member as openpyxl reads it: checked by its package at the first read."""

    def __init__(self, raw: IO[bytes], package: Package, name: str) -> None:
        super().__init__()
        self.raw = raw
        self.package = package
        self.name = name
        self.checked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        n = -1 if size is None or size < 0 else size
        if not self.checked:
            self.package._check_read(self.name, whole=n < 0)
            self.checked = True
        return self.raw.read(n)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


@dataclass(frozen=True)
class _Entries:
    """The entries of a part, which openpyxl drops once read: the rows of a worksheet
    (their cells counted too), or the strings of the shared strings."""

    tag: str
    limit: int
    what: str
    setting: str
    cell: str | None = None
    """The tag of an entry's cells (a row's ``c``)."""


class _Scan:
    """The expat handlers that count one part; the first limit crossed raises.

    Outside the entries of a part every element is counted (``max_part_elements``),
    and its children where a limit applies (style lists, sheets). Inside an entry the
    parser runs the leaner ``_inner_*`` handlers — the hot path, a few tenths of a
    microsecond a cell on top of expat's own work — which count the entry's elements,
    depth and cells."""

    def __init__(self, budget: Budget, where: str, size: int, strings: list[str] | None) -> None:
        self.settings = s = budget.settings
        self.budget = budget
        self.where = where
        self.size = size
        self.strings = strings
        """The shared-strings parts named by this manifest ([Content_Types].xml only)."""
        parser = self.parser = expat.ParserCreate(namespace_separator=" ")
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.StartDoctypeDeclHandler = self._doctype
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self.root: str | None = None
        self.depth = self.elements = self.loose = 0
        self.elements_left = budget.elements_left
        self.names: list[str] = []
        """The local names of the open elements outside entries."""
        self.children: list[int] = []
        self.child_limits: dict[str, tuple[int, str, str]] = {
            "sheets": (s.max_sheets, "sheets", "MAX_SHEETS"),
            **{
                tag: (s.max_style_entries, what, "MAX_STYLE_ENTRIES")
                for tag, what in STYLE_LISTS.items()
            },
        }
        self.entries: _Entries | None = None
        self.entry_tag: str | None = None
        self.cell_tag: str | None = None
        self.entry_count = self.cells = 0
        self.entry_depth = self.inner = self.row_cells = 0
        self.inner_max = 4 * s.max_row_cells
        """Elements inside one entry: a cell is 2–3 (c, v or is / t), rich text a few more."""

    @property
    def streams_as(self) -> Kind | None:
        return "sheet" if self.root == WORKSHEET else "strings" if self.root == STRINGS else None

    def _begin(self, root: str) -> None:
        s = self.settings
        self.root = root
        limit, setting = _size_limit(s, root == WORKSHEET)
        if self.size > limit:
            raise too_big(self.where, self.size, limit, setting)
        if root == WORKSHEET:
            self.entries = _Entries(ROW, s.max_sheet_rows, "rows", "MAX_SHEET_ROWS", CELL)
        elif root == STRINGS:
            self.entries = _Entries(
                STRING, s.max_shared_strings, "shared strings", "MAX_SHARED_STRINGS"
            )
        if self.entries is not None:
            self.entry_tag, self.cell_tag = self.entries.tag, self.entries.cell

    def _start(self, name: str, attributes: dict[str, str]) -> None:
        depth = self.depth = self.depth + 1
        self.elements += 1
        if self.elements > self.elements_left:
            raise self.budget.out_of_elements()
        if depth > DEPTH_MAX:
            self._too_deep()
        if self.names:
            self.children[-1] += 1
            limit = self.child_limits.get(self.names[-1])
            if limit is not None and self.children[-1] > limit[0]:
                raise too_many(self.where, *limit)
        if name == self.entry_tag:
            self._enter(depth)
            return
        self.loose += 1
        if self.loose > self.settings.max_part_elements:
            outside = " outside its rows" if self.root == WORKSHEET else ""
            raise too_many(
                self.where,
                self.settings.max_part_elements,
                f"XML elements{outside}",
                "MAX_PART_ELEMENTS",
            )
        if depth == 1:
            self._begin(name)
        local = name[name.rfind(" ") + 1 :]
        manifest = self.strings is not None and local == "Override"
        if manifest and attributes.get("ContentType") == SHARED_STRINGS:
            cast(list[str], self.strings).append(attributes.get("PartName", "")[1:])
        self.names.append(local)
        self.children.append(0)

    def _end(self, _name: str) -> None:
        self.depth -= 1
        self.names.pop()
        self.children.pop()

    def _enter(self, depth: int) -> None:
        entries = cast(_Entries, self.entries)
        self.entry_count += 1
        if self.entry_count > entries.limit:
            raise too_many(self.where, entries.limit, entries.what, entries.setting)
        self.entry_depth, self.inner, self.row_cells = depth, 0, 0
        self.parser.StartElementHandler = self._inner_start
        self.parser.EndElementHandler = self._inner_end

    def _inner_start(self, name: str, _attributes: Any) -> None:
        self.depth += 1
        self.inner += 1
        if name == self.cell_tag:
            self.row_cells += 1
            if self.row_cells > self.settings.max_row_cells:
                self._too_many_cells()
        if self.inner > self.inner_max or self.depth > DEPTH_MAX:
            self._entry_too_big()

    def _inner_end(self, _name: str) -> None:
        depth = self.depth
        self.depth = depth - 1
        if depth == self.entry_depth:
            self._leave()

    def _leave(self) -> None:
        """The end of an entry: its elements and cells join the part's counts."""
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.entry_depth = 0
        self.elements += self.inner
        self.cells += self.row_cells
        if self.elements > self.elements_left:
            raise self.budget.out_of_elements()
        if self.cells > self.settings.max_sheet_cells:
            self._too_many_cells()

    def _too_many_cells(self) -> NoReturn:
        s = self.settings
        if self.row_cells > s.max_row_cells:
            raise too_many(f"A row of {self.where}", s.max_row_cells, "cells", "MAX_ROW_CELLS")
        raise too_many(self.where, s.max_sheet_cells, "cells", "MAX_SHEET_CELLS")

    def _entry_too_big(self) -> NoReturn:
        if self.depth > DEPTH_MAX:
            self._too_deep()
        what = "A row" if self.root == WORKSHEET else "A shared string"
        raise too_large(
            f"{what} of {self.where} holds more than {self.inner_max} XML elements "
            "(4 × BATCH_MAX_ROW_CELLS)."
        )

    def _too_deep(self) -> NoReturn:
        raise not_a_workbook(
            f"{self.where} nests its XML more than {DEPTH_MAX} levels deep; it is not a workbook."
        )

    def _doctype(self, *_args: Any) -> NoReturn:
        raise not_a_workbook(
            f"{self.where} declares a document type (DTD), which workbooks never do; "
            "batchd does not read XML entities."
        )

    def finish(self) -> None:
        """A member that is not XML (no root element) is held to ``max_part_bytes``.
        An entry cut short by broken XML still counts."""
        if self.entry_depth:
            self.elements += self.inner
        limit, setting = _size_limit(self.settings, worksheet=False)
        if self.root is None and self.size > limit:
            raise too_big(self.where, self.size, limit, setting)
