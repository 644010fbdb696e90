"""The one table from domain errors to gRPC status codes, and the interceptor that applies it.

A servicer raises domain errors (``ringlab.store.errors``, ``ringlab.errors``); the interceptor
turns each into its status with the error's own message, which says what to do.  A failed call
to another service (the guest's StreamConsole to the hypervisor) keeps its status and message,
logged without a traceback.  Anything else is a bug: INTERNAL with the exception's type, never a
crashed server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ringlab.errors import ImageError, RinglabError, UsageError
from ringlab.store.errors import (
    AlreadyExists,
    Exhausted,
    InvalidRequest,
    StaleLease,
    Unauthenticated,
    VmNotFound,
    WrongState,
)

__all__ = ["STATUS_OF", "ErrorInterceptor", "status_of"]

log = logging.getLogger("ringlab.rpc")

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UsageError, grpc.StatusCode.INVALID_ARGUMENT),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (VmNotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (WrongState, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleLease, grpc.StatusCode.FAILED_PRECONDITION),
    (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (RinglabError, grpc.StatusCode.INVALID_ARGUMENT),
)
"""First match wins: more specific classes first."""


def _upstream(exc: BaseException) -> grpc.StatusCode | None:
    """The status of a call this server made to another service (the guest's to the
    hypervisor), or None when ``exc`` is not such a failed call."""
    if not isinstance(exc, grpc.RpcError):
        return None
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status ``exc`` maps to: ``STATUS_OF``, or the status of a failed call to another
    service passed on as it came (NOT_FOUND stays NOT_FOUND); None for a bug."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return _upstream(exc)


def _aborted(exc: BaseException) -> bool:
    """``context.abort`` raises a bare ``Exception()`` (``_AbortError`` in some versions) once the
    status is set: it must go through untouched."""
    return type(exc).__name__ == "_AbortError" or (type(exc) is Exception and not exc.args)


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code = status_of(exc)
    if isinstance(exc, grpc.RpcError) and code is not None:
        details = getattr(exc, "details", None)
        message = str((details() if callable(details) else None) or code.name)
        log.info("a call to another service failed: %s: %s (passed on to the caller)", code.name, message)
        context.abort(code, message)
    if code is None:
        log.exception("unexpected error in a handler")
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}: {exc}); please report it"
        )
    else:
        context.abort(code, str(exc))


def _wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except Exception as exc:
            if _aborted(exc):
                raise
            _abort(context, exc)
            raise  # not reached: abort raises

    return handler


def _wrap_stream(
    fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request, context)
        except Exception as exc:
            if _aborted(exc):
                raise
            _abort(context, exc)

    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Applies ``STATUS_OF`` to every unary and server-streaming handler."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
