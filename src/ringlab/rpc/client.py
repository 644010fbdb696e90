"""Client side: channels that carry the bearer token and retry UNAVAILABLE, and one function that
says what a failed call means and what to do about it.

A guest replica that learns its VM's name at run time (compose's scaled ``guest`` service) is
handed the guest key instead of a token (``guest-key:KEY``, docs/security.md): its channel then
signs each call with the token of the VM the request names (its ``name`` or ``vm`` field)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ringlab.store.credentials import GUEST_KEY_PREFIX, guest_token

if TYPE_CHECKING:
    from ringlab.rpc.tracing import Tracing

__all__ = ["describe_error", "open_channel"]

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "loadBalancingConfig": [{"round_robin": {}}],
    }
)


class _Auth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._md]
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _GuestSigner(_Auth):
    """Signs each call with the guest token of the VM its request names."""

    def __init__(self, key: str) -> None:
        self._key = key

    def _signed(self, details: grpc.ClientCallDetails, request: Any) -> grpc.ClientCallDetails:
        name = str(getattr(request, "name", "") or getattr(request, "vm", ""))
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {guest_token(self._key, name)}")]
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)


def open_channel(target: str, token: str | None = None, *, tracing: Tracing | None = None) -> grpc.Channel:
    """An insecure channel to ``target`` (HOST:PORT, or dns:///NAME:PORT for a scaled service)
    sending ``token`` (default: $RINGLAB_TOKEN) as a bearer token (``guest-key:KEY``: each call
    signed with the guest token of the VM it names); with ``tracing`` on, each call a CLIENT span
    whose trace context travels in the call's metadata (``ringlab.rpc.tracing``)."""
    if token is None:
        token = os.environ.get("RINGLAB_TOKEN", "")
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    if tracing is not None:
        channel = tracing.traced_channel(channel)
    if token.startswith(GUEST_KEY_PREFIX):
        return grpc.intercept_channel(channel, _GuestSigner(token[len(GUEST_KEY_PREFIX) :]))
    if token:
        return grpc.intercept_channel(channel, _Auth(token))
    return channel


_ADVICE = {
    grpc.StatusCode.UNAVAILABLE: "nothing answers there: start a deployment with 'ringlab up', or give its "
    "address with --hypervisor HOST:PORT or RINGLAB_HYPERVISOR (a TLS mismatch also shows as UNAVAILABLE)",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the deployment did not answer in time: is it overloaded or stuck?",
    grpc.StatusCode.UNIMPLEMENTED: "the server there is not a Ringlab hypervisor of this version",
    grpc.StatusCode.PERMISSION_DENIED: "the deployment knows the credential sent, but its role may not make "
    "this call: an operator's token manages VMs through the hypervisor, never a pCPU (docs/security.md)",
}

_TOKEN_ADVICE = {
    None: "this deployment wants its bearer token: pass --token TOKEN or set RINGLAB_TOKEN",
    False: "no token was sent: pass --token TOKEN or set RINGLAB_TOKEN to the deployment's token",
    True: "the token sent was refused: check --token or RINGLAB_TOKEN against the token the deployment "
    "was started with ('ringlab up --token')",
}


def describe_error(err: grpc.RpcError, target: str, *, token_sent: bool | None = None) -> str:
    """``TARGET: STATUS: server message (what to do)``.

    ``token_sent`` says whether the call carried a bearer token (None: unknown), so that an
    UNAUTHENTICATED answer tells a missing token from a wrong one."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        advice = _TOKEN_ADVICE[token_sent]
    else:
        advice = _ADVICE.get(code, "")
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return f"{target}: {name}: {details}" + (f" ({advice})" if advice else "")
