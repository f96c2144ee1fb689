"""A webhook receiver for tests: a real HTTP server on a loopback port (a thread), which
records every request and answers from a script (status codes in order, a redirect, a
huge body, or holding the request open until the test lets it go — then dropping it or
answering it late)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG_BODY = 32 * 1024 * 1024
"""Bytes offered by ``huge=True`` (far beyond what batchd reads, and the socket buffers)."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    """Status codes for the next requests, in order; 200 once they run out."""
    redirect_to: str | None = None
    huge: bool = False
    hold: threading.Event | None = None
    """Set: the first request is recorded, then left unanswered until the event is set."""
    answer_late: bool = False
    """With ``hold``: once let go, the held request is answered (as any other) instead of
    the connection being dropped."""
    held: threading.Event = field(default_factory=threading.Event)
    written: int = 0
    """Bytes of a ``huge`` body the client took before it closed the connection."""
    head_len: int = 0
    """Bytes of the status line and headers sent before a ``huge`` body."""

    def count(self) -> int:
        return len(self.requests)

    async def holding(self) -> bool:
        """A held request has arrived (for ``eventually``)."""
        return self.held.is_set()


@contextmanager
def receiver() -> Iterator[Receiver]:
    state: Receiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            first = not state.requests
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append(Received(self.path, headers, body))
            if first and state.hold is not None:
                state.held.set()
                state.hold.wait(30)
                if not state.answer_late:
                    return  # no answer: the sender is gone by now
            code = state.codes.pop(0) if state.codes else 200
            if state.redirect_to is not None:
                code = 302
            if state.huge:  # the head written by hand, so that its length is known
                head = f"HTTP/1.1 {code} OK\r\nContent-Length: {BIG_BODY}\r\n\r\n".encode()
                self.wfile.write(head)
                state.head_len = len(head)
                chunk = b"x" * 65536
                try:
                    for _ in range(BIG_BODY // len(chunk)):
                        self.wfile.write(chunk)
                        state.written += len(chunk)
                except OSError:
                    pass
                return
            self.send_response(code)
            if state.redirect_to is not None:
                self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()
