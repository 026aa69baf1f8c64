"""What stands between the network and the labelling app (ASGI middleware).

- A loopback bind (the default) answers loopback Host names only (DNS rebinding).
- Any other bind requires the access token: ``Authorization: Bearer``, the cookie, or the
  ``?token=`` of the URL ``d3po label`` printed (then kept as a cookie, as Jupyter does).
- POST bodies must declare their length and stay under ``MAX_BODY_BYTES``.
- Responses forbid framing, sniffing, and any script or image from elsewhere.
"""

from __future__ import annotations

import ipaddress
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware

MAX_BODY_BYTES = 16 * 1024
TOKEN_COOKIE = "d3po_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: the access token (when set), bounded POST bodies, safety headers."""

    def __init__(self, app, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        via_query = self.token is not None and request.query_params.get("token") == self.token

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Content-Security-Policy"] = "default-src 'self'"
                if via_query:  # the printed URL: remember the token as a cookie, as Jupyter does
                    headers.append("Set-Cookie", f"{TOKEN_COOKIE}={self.token}; HttpOnly; "
                                   "SameSite=Strict; Path=/")  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> JSONResponse | None:
        if self.token is not None and not _has_token(request, self.token):
            detail = "missing or wrong access token: open the URL d3po label printed"
            return JSONResponse({"detail": detail}, status_code=401)
        if request.method == "POST":
            length = request.headers.get("content-length", "")
            if not length.isdigit():
                return JSONResponse({"detail": "a Content-Length is required"}, status_code=411)
            if int(length) > MAX_BODY_BYTES:
                detail = f"body over {MAX_BODY_BYTES} bytes"
                return JSONResponse({"detail": detail}, status_code=413)
        return None


def _has_token(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    offered = [
        header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else "",
        request.cookies.get(TOKEN_COOKIE, ""),
        request.query_params.get("token", ""),
    ]
    return any(secrets.compare_digest(value, token) for value in offered if value)


def protect(app: FastAPI, token: str | None, host: str) -> None:
    """Install the guards for an app bound to ``host`` (token: required beyond loopback)."""
    app.add_middleware(Guard, token=token)
    if is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
