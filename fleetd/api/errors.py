"""How the API fails: fleet's error body, and which failures mean what status.

Every error answers ``{"error": {"code": N, "message": "..."}}``. Handlers raise
:class:`ApiError`; the middleware turns it (and everything else) into that shape. The
mappings from the model's refusals and the node's exceptions to a status live here so that
every handler maps them alike (which failures mean "etcd is unreachable" is the registry's
to say: :func:`fleetd.registry.is_unavailable`).
"""

from __future__ import annotations

from aiohttp import web

from fleetd.model.submit import Refusal, SubmitError


class ApiError(Exception):
    """An answer other than success: HTTP ``status`` and a message for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """fleet's error shape: ``{"error": {"code": status, "message": message}}``."""
    return web.json_response({"error": {"code": status, "message": message}}, status=status, headers=headers)


_REFUSAL_STATUS = {Refusal.INVALID: 400, Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409, Refusal.BUSY: 503}


def refused(exc: SubmitError) -> ApiError:
    """A unit write the model refused (:mod:`fleetd.model.submit`), as the API answers it."""
    return ApiError(_REFUSAL_STATUS[exc.kind], exc.message)


EXIT_CODE_HEADER = "X-Fleet-Exit-Code"


def node_failure(what: str, exc: BaseException) -> ApiError:
    """The local node's journal or status reader failed: its exception picks the status
    (see :class:`~fleetd.api.context.NodeInfo`); a tool's exit code on the exception
    (``exit_code``) rides along in ``X-Fleet-Exit-Code``, for fleetctl to exit with."""
    if isinstance(exc, ApiError):
        return exc
    failure = _node_failure(what, exc)
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        failure.headers[EXIT_CODE_HEADER] = str(code)
    return failure


def _node_failure(what: str, exc: BaseException) -> ApiError:
    if isinstance(exc, LookupError):
        return ApiError(404, f"{what}: {exc}")
    if isinstance(exc, ValueError):
        return ApiError(400, f"{what}: {exc}")
    if isinstance(exc, NotImplementedError):
        return ApiError(501, f"{what}: {exc or 'not available on this fleetd'}")
    return ApiError(500, f"{what}: {exc}")


__all__ = ["EXIT_CODE_HEADER", "ApiError", "error_response", "node_failure", "refused"]
