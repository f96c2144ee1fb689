"""Request body size limits, enforced before anything parses a body.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is answered with
413 at once, without reading the body; a body streamed without one (chunked) is counted
as it arrives and refused as soon as it passes the limit. multipart/form-data bodies
(uploads) have their own, larger limit (``BATCH_MAX_UPLOAD_BYTES``); every other body
is held to ``BATCH_MAX_BODY_BYTES``. The 413 is the API's usual JSON error body.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit. An
    ``HTTPException``, so FastAPI's body reader lets it through to the app's handler
    (which renders the JSON 413) instead of turning it into a 400."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(
            status_code=413,
            detail=f"The request body is larger than the {what} limit of {limit} bytes.",
        )


class BodyLimitMiddleware:
    """413 for request bodies over the limit, checked before the app reads them."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _limit(self, headers: Headers) -> tuple[int, str]:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == "multipart/form-data":
            return self.max_upload_bytes, "upload"
        return self.max_body_bytes, "request body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, what = self._limit(headers)
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            await _send_413(send, BodyTooLarge(limit, what))
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, what)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Read outside FastAPI's body handling (no app handler saw it): answer here.
            if started:
                raise
            await _send_413(send, exc)


async def _send_413(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps({"error": "PayloadTooLarge", "detail": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
