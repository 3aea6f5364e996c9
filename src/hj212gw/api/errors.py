"""How the admin API fails: every error a JSON answer with a request id, never PostgreSQL's text.

A database outage or a full API pool is a 503, a statement timeout a 504, a value PostgreSQL
refused the client's 400; PostgreSQL's error text goes to the log, found by the `request_id` the
answer carries. Any other exception is a bug: one ERROR line with the traceback, a bare 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from aiohttp import web

from hj212gw.api.responses import ApiError, error_response
from hj212gw.storage.db import OUTAGE_ERRORS, DatabaseUnavailable, PoolBusy

log = structlog.get_logger("hj212gw.api")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
UNAVAILABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *OUTAGE_ERRORS)


async def read_db(call: Awaitable[T]) -> T:
    """Await a Database call; an outage becomes 503, a full API pool 503, a statement timeout 504."""
    try:
        return await call
    except PoolBusy as err:
        log.warning("api_pool_busy", detail=str(err))
        raise ApiError(
            503, "busy", "every API database connection is in use; try again shortly", {"Retry-After": "1"}
        ) from err
    except asyncpg.QueryCanceledError as err:
        log.warning("api_query_timeout", detail=str(err))
        raise ApiError(
            504, "query_timeout", "the query ran longer than the API's statement timeout; ask for less"
        ) from err
    except UNAVAILABLE as err:
        log.warning("api_database_unavailable", error=type(err).__name__, detail=str(err))
        raise ApiError(503, "database_unavailable", "PostgreSQL cannot be reached; try again later") from err


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response gets an X-Request-Id; errors become JSON (see `_error_for`)."""
    request_id = uuid.uuid4().hex[:12]
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            response = _error_for(request, err, request_id)
        except Exception as err:
            response = _error_for(request, err, request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _error_for(request: web.Request, err: Exception, request_id: str) -> web.Response:
    """ApiError and HTTP errors as they are; PostgreSQL's text only to the log (a value it refused
    is the client's 400, anything else a 500); any other exception is a bug: one ERROR, a bare 500."""
    if isinstance(err, ApiError):
        shown_id = request_id if err.status >= 500 else None
        return error_response(err.status, err.error, err.detail, err.headers, shown_id)
    if isinstance(err, web.HTTPException):
        error = (err.reason or "error").lower().replace(" ", "_")
        headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        return error_response(err.status, error, f"{request.method} {request.path}: {err.reason}", headers)
    if isinstance(err, asyncpg.DataError):  # a parameter value PostgreSQL cannot take: the client's input
        log.info(
            "api_parameter_refused",
            path=request.path,
            request_id=request_id,
            error=type(err).__name__,
            detail=str(err)[:500],
        )
        detail = f"a parameter value is out of range for the database; see the gateway log for request_id={request_id}"
        return error_response(400, "bad_parameter", detail, request_id=request_id)
    log.error("api_request_failed", method=request.method, path=request.path, request_id=request_id, exc_info=err)
    detail = f"unexpected error; see the gateway log for request_id={request_id}"
    return error_response(500, "internal_error", detail, request_id=request_id)
