"""The web console (``GET /``): server-rendered page shells that call the
JSON API with ``fetch`` from the browser, signed in with the session cookie.

Why a package of its own: the console is a client of the API, not a second API. It
reads nothing the API does not expose, so the API's visibility rules are the only ones;
the server side only decides which page shell to send (and who must sign in first)."""

from app.web.router import install_console

__all__ = ["install_console"]
