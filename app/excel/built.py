"""A download built whole before its response starts (the approval template, the error
file).

Why: once a 200 and its headers are sent, a failure can only cut the body short, and a
client that does not check may keep a truncated (0-byte) workbook as if it were the
file. Building first turns any failure into an error response; the response then
carries a ``Content-Length``, so a connection lost while sending is a visible error
too. The file is unlinked as soon as it is open: its open handle keeps it readable, and
nothing is left on disk whatever happens to the response (even if it is never sent).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO

FILE_CHUNK = 256 * 1024


@dataclass
class BuiltFile:
    handle: IO[bytes]
    size: int

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file in chunks, closed at the end (also when the client goes)."""
        with self.handle:
            while chunk := self.handle.read(FILE_CHUNK):
                yield chunk

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Length": str(self.size)}


async def build_file(
    build: Callable[[str], Awaitable[None]], *, prefix: str, suffix: str
) -> BuiltFile:
    """Run ``build(path)`` into a temporary file and return it open for reading."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        await build(path)
        handle = open(path, "rb")  # noqa: ASYNC230, SIM115 - a local temp file; closed by chunks()
    finally:
        os.unlink(path)
    return BuiltFile(handle, os.fstat(handle.fileno()).st_size)
