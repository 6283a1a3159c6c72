"""The app's outer layer, as pure ASGI middleware: who may ask, and how much they may send.

:class:`Guard` checks every HTTP request before FastAPI sees it:

- the ``Host`` header must name this server (its address, ``localhost``, ``127.0.0.1``,
  ``::1`` or an allowed host name), else 400: a page on another site that makes its own
  name resolve to 127.0.0.1 (DNS rebinding) cannot use the app;
- a request that changes state (``POST``, ``PUT``, ``PATCH``, ``DELETE``) sent by a page
  of another origin (its ``Origin`` header, or ``Sec-Fetch-Site: cross-site``) gets 403;
- each browser gets a random client id in a cookie (``sacam_client``, ``HttpOnly``,
  ``SameSite=Strict``), so that its results are its own;
- the request body is limited while it streams in (413 over the limit);
- every response gets a strict Content-Security-Policy.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import partial
from typing import Any

from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names every server answers to."""
COOKIE = "sacam_client"
"""The cookie that names a browser (32 hex digits)."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# a refused body is read and discarded up to this size before the 413 goes out (see Guard)
DRAIN_MAX_BYTES = 64 * 2**20
_CLIENT_ID = re.compile(r"[0-9a-f]{32}")


def host_name(value: str) -> str:
    """The host name of a ``Host`` header or URL authority, lower case, without the port.

    Example:
        >>> host_name("[::1]:8000"), host_name("LocalHost:80"), host_name("example.org.")
        ('::1', 'localhost', 'example.org')
    """
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class Guard:
    """Pure ASGI middleware: host and origin checks, client cookie, body limit, headers.

    The body is read message by message; once it exceeds ``max_bytes`` (or when the
    declared ``Content-Length`` already does) nothing more of it is kept: the rest is
    read and discarded, then the request is answered 413 and the connection closed. A
    server that answers and closes while the client is still sending leaves unread data
    in its socket, and the kernel then resets the connection, so the client may see the
    reset instead of the answer (RFC 9112, section 9.6; it happened to about one upload
    in five on the loopback interface). Bodies over :data:`DRAIN_MAX_BYTES` are not
    read: their 413 goes out at once. Accepted bodies are passed on unchanged.

    Args:
        app: the application behind the guard.
        max_bytes: the largest request body accepted.
        limit_text: the limit as the 413 message shows it (``"20 MB"``).
        allowed_hosts: host names accepted besides :data:`LOCAL_HOSTS`.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, limit_text: str, allowed_hosts: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_text = limit_text
        self.hosts = LOCAL_HOSTS | {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self._refusal(scope["method"], headers)
        if refusal is not None:
            await _answer(partial(_send_with_headers, send, None), *refusal, headers={})
            return
        client, is_new = _client_id(headers.get("cookie", ""))
        scope.setdefault("state", {})["client"] = client
        send = partial(_send_with_headers, send, client if is_new else None)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            await self._limited(scope, receive, send, headers)
            return
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """The status and message a request is refused with, or ``None``."""
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            return 400, (
                "this server answers only to its own address (the Host header named another "
                "site); to reach it under another name, start it with --allowed-host NAME"
            )
        if method not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site", "")
        own = {f"http://{host.lower()}", f"https://{host.lower()}"}
        if (origin is not None and origin.lower() not in own) or site in (
            "cross-site",
            "same-site",
        ):
            return 403, "requests from pages of other sites are refused: use this server's own page"
        return None

    async def _limited(self, scope: Scope, receive: Receive, send: Send, headers: dict) -> None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_MAX_BYTES:
                await _discard(receive, 0)
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _discard(receive, size)
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        message = f"the upload is over the limit of {self.limit_text}: send a smaller file"
        await _answer(send, 413, message, headers={"connection": "close"})


def _client_id(cookie_header: str) -> tuple[str, bool]:
    """The client id of the request's cookie, or a new one (``True`` when new)."""
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and _CLIENT_ID.fullmatch(value):
            return value, False
    return secrets.token_hex(16), True


async def _send_with_headers(send: Send, new_client: str | None, message: Message) -> None:
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((b"content-security-policy", CSP.encode()))
        headers.append((b"x-content-type-options", b"nosniff"))
        headers.append((b"referrer-policy", b"no-referrer"))
        if new_client is not None:
            cookie = f"{COOKIE}={new_client}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
            headers.append((b"set-cookie", cookie.encode()))
        message["headers"] = headers
    await send(message)


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _discard(receive: Receive, read: int) -> None:
    """Read and drop the rest of a request body, up to :data:`DRAIN_MAX_BYTES` in all."""
    while read <= DRAIN_MAX_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _no_receive() -> Message:  # pragma: no cover - a response never reads
    return {"type": "http.disconnect"}
