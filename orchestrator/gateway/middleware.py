"""What every request passes before its route: the API key, the body limit, the metrics.

`guard` (HTTP middleware) checks the bearer key (health checks need none) and a declared
Content-Length against `max_body_bytes`, and records each request's status and latency,
by path and by model (the one a chat request named, once the route accepted it), and,
with an access log, writes a line per request.
`BodyLimit` (ASGI) holds the same limit for a body sent chunked, with no length declared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response

from orchestrator.gateway.errors import GatewayError, error_response
from orchestrator.gateway.metrics import GatewayMetrics

#: Paths a load balancer probes: no API key needed.
OPEN_PATHS = ("/healthz", "/readyz")

Handler = Callable[[Request], Awaitable[Response]]


def guard(
    keys: set[str],
    max_body_bytes: int,
    metrics: GatewayMetrics,
    access: logging.Logger | None = None,
) -> Callable[[Request, Handler], Awaitable[Response]]:
    """The HTTP middleware: 401 without one of `keys` (when there are any), 413 for a
    declared body over `max_body_bytes`; every request counted in `metrics` and, with
    `access`, logged there (client, method, path, status, milliseconds, model)."""

    async def check(request: Request, call_next: Handler) -> Response:
        t0 = time.perf_counter()
        path = request.url.path

        def done(status: int) -> None:
            seconds = time.perf_counter() - t0
            model = getattr(request.state, "model", "")
            metrics.observe(path, status, seconds, model)
            if access is not None:
                client = f"{request.client.host}:{request.client.port}" if request.client else "-"
                tail = f" model={model}" if model else ""
                access.info(
                    '%s "%s %s" %d %.1f ms%s',
                    client,
                    request.method,
                    path,
                    status,
                    1000 * seconds,
                    tail,
                )

        if path not in OPEN_PATHS and keys:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if token not in keys:
                done(401)
                return error_response(
                    GatewayError(
                        401,
                        "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        "authentication_error",
                        "invalid_api_key",
                    )
                )
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            done(413)
            return error_response(
                GatewayError(
                    413,
                    f"body of {length} bytes is over the {max_body_bytes} limit",
                    code="body_too_large",
                )
            )
        response = await call_next(request)
        done(response.status_code)
        return response

    return check


class BodyLimit:
    """A body sent without Content-Length (chunked) is read here first, up to the
    limit: past it the client gets the same 413 the header check gives; within it,
    the body is handed on as received."""

    def __init__(self, inner: Any, limit: int, metrics: GatewayMetrics) -> None:
        self.inner, self.limit, self.metrics = inner, limit, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] != "http" or b"content-length" in headers:
            return await self.inner(scope, receive, send)
        held: list[Any] = []
        seen = 0
        while True:
            msg = await receive()
            held.append(msg)
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                self.metrics.observe(scope.get("path", ""), 413, 0.0)
                err = GatewayError(
                    413, f"body is over the {self.limit} byte limit", code="body_too_large"
                )
                return await error_response(err)(scope, receive, send)
            if not msg.get("more_body"):
                break

        async def replay() -> Any:
            return held.pop(0) if held else await receive()

        await self.inner(scope, replay, send)
