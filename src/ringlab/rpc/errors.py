"""The one table from domain errors to gRPC status codes, and the interceptor that applies it.

A servicer raises domain errors (``ringlab.store.errors``, ``ringlab.errors``); the interceptor
turns each into its status with the error's own message, which says what to do.  Every status is
precise (docs/services.md, Errors):

- INVALID_ARGUMENT carries a ``google.rpc.BadRequest`` in the rich status (grpcio-status,
  ``grpc-status-details-bin``): one field violation naming the request field at fault (an
  error's ``field`` attribute: ``InvalidField``, ``InvalidDefinition``), its description the
  message.
- A failed call to another service (the guest's StreamConsole to the hypervisor) is mapped, not
  re-raised: what concerns the caller's request (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED, ...) keeps its status and message; anything else (the upstream service is
  down, refused this service's credentials, failed) is UNAVAILABLE naming the upstream status.
  Logged on one line, without a traceback.
- Redis unreachable is UNAVAILABLE; a request too large for memory is RESOURCE_EXHAUSTED.
- Anything else is a bug: INTERNAL naming the exception's type and a reference to the server's
  log (where the traceback is), never its text (it could hold anything), never a crashed server.

No message carries more than ``MAX_MESSAGE`` characters: a message echoing a huge field stays
small enough for the status trailer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # a namespace package: imported by module
import google.rpc.status_pb2 as status_pb2
import grpc
import redis
from google.protobuf import any_pb2
from grpc_status import rpc_status

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

__all__ = [
    "MAX_MESSAGE",
    "PASSED_ON",
    "STATUS_OF",
    "ErrorInterceptor",
    "InvalidField",
    "bad_request",
    "field_of",
    "status_of",
]

log = logging.getLogger("ringlab.rpc")

MAX_MESSAGE = 1000
"""The longest status message sent (characters); a longer one is cut, saying so."""


class InvalidField(InvalidRequest):
    """An ``InvalidRequest`` that names the request field at fault (``field``: its name in the
    proto, dotted for a nested one, e.g. ``sync.registers``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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
    (redis.ConnectionError, grpc.StatusCode.UNAVAILABLE),
    (redis.TimeoutError, grpc.StatusCode.UNAVAILABLE),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)
"""First match wins: more specific classes first."""

PASSED_ON = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
"""Statuses of a failed call to another service that answer the caller's own request, passed on
as they came; any other (UNAVAILABLE, UNAUTHENTICATED or PERMISSION_DENIED for this service's
own credentials, INTERNAL, UNKNOWN, CANCELLED, ...) becomes UNAVAILABLE."""

_MESSAGES = {
    redis.ConnectionError: "the deployment's Redis does not answer: try again in a moment",
    redis.TimeoutError: "the deployment's Redis did not answer in time: try again in a moment",
    MemoryError: "the server has not the memory this request needs: ask for less",
}


def _upstream(exc: BaseException) -> grpc.StatusCode | None:
    """The status of a call this server made to another service (the guest's to the
    hypervisor), or None when ``exc`` is not such a failed call."""
    if not isinstance(exc, grpc.RpcError):
        return None
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status ``exc`` maps to: ``STATUS_OF``, or for a failed call to another service its
    status if ``PASSED_ON``, else UNAVAILABLE; None for a bug."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    upstream = _upstream(exc)
    if upstream is None:
        return None
    return upstream if upstream in PASSED_ON else grpc.StatusCode.UNAVAILABLE


def field_of(exc: BaseException) -> str:
    """The request field ``exc`` names (its ``field`` attribute), or ""."""
    field = getattr(exc, "field", "")
    return field if isinstance(field, str) else ""


def _short(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 40] + f"... ({len(message)} characters, cut)"


def bad_request(message: str, violations: list[tuple[str, str]]) -> grpc.Status:
    """INVALID_ARGUMENT with ``message`` and a ``google.rpc.BadRequest`` of ``violations``
    ((field, description) pairs), as ``grpc_status.rpc_status.to_status`` builds it."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=_short(description))
                for field, description in violations
            ]
        )
    )
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    return rpc_status.to_status(status_pb2.Status(code=code, message=_short(message), details=[detail]))


def _upstream_violations(exc: grpc.RpcError, message: str) -> list[tuple[str, str]]:
    """The field violations of an upstream INVALID_ARGUMENT (its own BadRequest), or one
    naming no field when it sent none."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except Exception:  # a malformed rich status: keep the message
        status = None
    out: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        found = error_details_pb2.BadRequest()
        if detail.Unpack(found):
            out += [(v.field, v.description) for v in found.field_violations]
    return out or [("", message)]


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code = status_of(exc)
    upstream = _upstream(exc)
    if isinstance(exc, grpc.RpcError) and code is not None and upstream is not None:
        details = getattr(exc, "details", None)
        message = _short(str((details() if callable(details) else None) or upstream.name))
        log.info("a call to another service failed: %s: %s (answered %s)", upstream.name, message, code.name)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            context.abort_with_status(bad_request(message, _upstream_violations(exc, message)))
        if upstream not in PASSED_ON:
            message = f"the service this one depends on answered {upstream.name}: {message}"
        context.abort(code, _short(message))
    if code is None:
        reference = uuid.uuid4().hex[:12]
        log.exception("unexpected error in a handler (reference %s)", reference)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error ({type(exc).__name__}, reference {reference} in the server's log); "
            "please report it",
        )
    message = next((text for cls, text in _MESSAGES.items() if isinstance(exc, cls)), str(exc))
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        context.abort_with_status(bad_request(message, [(field_of(exc), message)]))
    context.abort(code, _short(message))


def _aborted(exc: BaseException) -> bool:
    """``context.abort`` raises a bare ``Exception()`` (``_AbortError`` in some versions) once the
    status is set: it must go through untouched."""
    return type(exc).__name__ == "_AbortError" or (type(exc) is Exception and not exc.args)


class _Undecodable:
    """A request whose bytes are not its message (what the deserializer gives instead of raising,
    which gRPC would answer INTERNAL)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return decode


def _refuse_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(request, _Undecodable):
        message = (
            f"the request to {method} is not a valid protobuf message of its type "
            f"({type(request.exc).__name__}): send the method's request message"
        )
        context.abort_with_status(bad_request(message, [("request", message)]))


def _wrap_unary(
    fn: Callable[[Any, grpc.ServicerContext], Any], method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        _refuse_undecodable(request, context, method)
        try:
            return fn(request, context)
        except Exception as exc:
            if _aborted(exc):
                raise
            _abort(context, exc)
            raise  # not reached: abort raises

    return handler


def _wrap_stream(
    fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _refuse_undecodable(request, context, method)
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
                _wrap_unary(handler.unary_unary, handler_call_details.method),
                request_deserializer=_decoding(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, handler_call_details.method),
                request_deserializer=_decoding(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
