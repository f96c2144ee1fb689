"""HTTP methods: ``OPTIONS`` answers which methods a path takes, and every 405 says it.

Starlette stops at the first route whose path matches, so its 405 for ``PUT
/api/v1/batches`` named only ``POST`` (the GET route is a separate one) and ``OPTIONS``
was a 405 too. This pure ASGI middleware asks every route: an ``OPTIONS`` request to a
path some route serves is a 204 with ``Allow``; a 405 gets the full ``Allow`` list. A
path no route serves stays a 404. (Cross-origin preflights are not served: the API is
called with bearer tokens from servers and generated clients, the console is same-origin.)
"""

from __future__ import annotations

from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class MethodsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def allowed(self, scope: Scope) -> list[str]:
        """Every method some route takes at this path, and OPTIONS; ``[]`` when no
        route serves the path."""
        routes = scope["app"].router.routes
        methods: set[str] = set()
        for method in METHODS:
            probe = {**scope, "method": method}
            for route in routes:
                if route.matches(probe)[0] == Match.FULL:
                    # A mount (the console's static files) matches any method; it reads only.
                    methods |= {"GET", "HEAD"} if isinstance(route, Mount) else {method}
                    break
        return sorted(methods | {"OPTIONS"}) if methods else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allowed = self.allowed(scope)
            if allowed:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [(b"allow", ", ".join(allowed).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return

        asked = dict(scope)  # the router rewrites the scope it routes (mounts change paths)

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                headers.append((b"allow", ", ".join(self.allowed(asked)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_allow)
