"""The gateway's errors: each is OpenAI's error JSON with the right HTTP status.

`GatewayError` is an answer to send (status, OpenAI error type, code, Retry-After);
`as_gateway_error` maps any other exception to one, so no input produces a 500:
`ConfigError` is the client's (400), a `ConclaveError` the experts' (503 when a retry can
succeed, else 502), anything else a failure below the gateway (502).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import (
    ConclaveError,
    ConfigError,
    NoAnswerError,
    RequestRejectedError,
)


class GatewayError(Exception):
    """An error with its HTTP status and OpenAI error type."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.retry_after = param, retry_after

    def body(self) -> dict[str, Any]:
        """OpenAI's error object (the value of the response's "error"); every error has a
        code, the status's when nothing more precise was given."""
        code = self.code or STATUS_CODES.get(self.status, "error")
        return {"message": self.message, "type": self.type, "param": self.param, "code": code}


#: an error's `code` when nothing more precise names it
STATUS_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    413: "body_too_large",
    422: "invalid_value",
    429: "rate_limited",
    499: "client_closed",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "timeout",
}


def error_response(err: GatewayError) -> JSONResponse:
    """`err` as an HTTP response, with Retry-After when it has one."""
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
    return JSONResponse({"error": err.body()}, status_code=err.status, headers=headers)


def shutting_down() -> GatewayError:
    """What a request hears once shutdown began: 503, retry (another replica) shortly."""
    return GatewayError(
        503, "the gateway is shutting down", "service_unavailable", "shutting_down", retry_after=5
    )


def as_gateway_error(exc: BaseException) -> GatewayError:
    """What the client hears for `exc`: the client's error (400) or the experts' (5xx)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ConfigError):
        return GatewayError(400, str(exc))
    if isinstance(exc, ConclaveError):
        return GatewayError(
            503 if exc.retryable else 502, str(exc), "upstream_error", retry_after=5
        )
    return GatewayError(502, f"the experts failed: {type(exc).__name__}: {exc}", "upstream_error")


def ensemble_error(exc: Exception) -> GatewayError:
    """A question the routed ensemble could not answer (`orchestrator.chat`): 400 when its
    experts all refused it (too long for their context), 502 when they all failed."""
    if isinstance(exc, RequestRejectedError):
        return GatewayError(400, str(exc))
    if isinstance(exc, NoAnswerError):
        return GatewayError(502, str(exc), "upstream_error")
    return as_gateway_error(exc)


def upstream_error(expert: str, result: Any) -> GatewayError:
    """A failed `GenerationResult` of `expert`: 400 when the engine refused the request
    (the client's to fix), 504 on a timeout, 503 when a retry can succeed, else 502."""
    err = result.error
    if err and err.type == RequestRejectedError.__name__:  # the client's request
        return GatewayError(400, f"expert {expert!r} refused the request: {err.message}")
    status = 504 if err and "Timeout" in err.type else 503 if err and err.retryable else 502
    why = err.message if err else "no result"
    return GatewayError(
        status,
        f"expert {expert!r} failed: {why}",
        "upstream_error",
        retry_after=5 if status == 503 else None,
    )


def add_error_handlers(app: FastAPI) -> None:
    """Every error `app` answers, in OpenAI's shape: its own, FastAPI's validation (400
    for a body that is not JSON, else 422 naming the field), Starlette's (404, 405) and
    any exception that escapes an endpoint."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_r: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(GatewayError(400, "the body is not valid JSON"))
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{loc or 'body'}: {first.get('msg', 'invalid')}"
        return error_response(GatewayError(422, msg, param=loc or None, code="invalid_field"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(GatewayError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        return error_response(as_gateway_error(exc))
