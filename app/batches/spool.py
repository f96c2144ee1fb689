"""Listed targets kept in a temporary file rather than in memory.

An Excel import of 50 000 rows carries a payload per row (the decision, the values and
the original cells for the error file); held as Python objects until the batch is
written, that costs far more memory than the file itself. The import flow
(``app.batches.imports``) checks a page of rows at a time and appends it here (pickled:
our own data in our own temporary file, never anything received); ``create_details``
reads it back a page at a time. Small sources never leave memory (``SpooledTemporaryFile``).
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any

from app.batches.resolve import Listed

IN_MEMORY_BYTES = 4 * 1024 * 1024
"""A spool smaller than this stays in memory; a larger one moves to a temporary file."""


class ListedSpool:
    """A ``ListedSource`` on disk: append pages of ``Listed``, read them back in order.
    Use it as a context manager (the file is removed on close)."""

    def __init__(self) -> None:
        # Owned by the spool for its whole life and closed by ``close`` / ``__exit__``.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=IN_MEMORY_BYTES
        )
        self._count = 0

    def __enter__(self) -> ListedSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self._count

    def append(self, listed: Listed) -> None:
        """Add ``listed``'s items after those already spooled."""
        if not len(listed):
            return
        self._file.seek(0, 2)
        columns = (
            listed.item_ids,
            listed.rows,
            listed.payloads,
            listed.errors,
            listed.error_codes,
        )
        pickle.dump(columns, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._count += len(listed)

    def pages(self, size: int) -> Iterator[Listed]:
        """The spooled items ``size`` at a time, in the order they were appended."""
        self._file.seek(0)
        page = _empty()
        while True:
            try:
                ids, rows, payloads, errors, codes = pickle.load(self._file)  # noqa: S301 (ours)
            except EOFError:
                break
            n, at = len(ids), 0
            while at < n:
                take = slice(at, min(n, at + size - len(page)))
                page.item_ids.extend(ids[take])
                _extend(page, "rows", rows, take)
                _extend(page, "payloads", payloads, take)
                _extend(page, "errors", errors, take)
                _extend(page, "error_codes", codes, take)
                at = take.stop
                if len(page) == size:
                    yield page
                    page = _empty()
        if len(page):
            yield page


def _empty() -> Listed:
    return Listed(item_ids=[], rows=[], payloads=[], errors=[], error_codes=[])


def _extend(page: Listed, name: str, column: list[Any] | None, take: slice) -> None:
    values: list[Any] = getattr(page, name)
    values.extend(column[take] if column is not None else [None] * (take.stop - take.start))
