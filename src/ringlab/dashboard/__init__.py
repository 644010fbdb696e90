"""The live web dashboard: a page a projector can show, fed by a deployment's hypervisor.

A thin adapter over the hypervisor's gRPC API (the same calls ``ringlab vm`` and ``ringlab top``
make), served over HTTP with Starlette and uvicorn; server-sent events carry the live view. Every
asset is a file of this package (``static/``): no CDN, no build step. ``ringlab up`` starts it in
its own process once the deployment serves; ``ringlab dashboard --target HOST:PORT`` runs it
alone (docs/dashboard.md).

The modules, each importing only those listed after it:

- ``server``: binds the socket and runs uvicorn (in a thread for ``up``, in the foreground alone);
- ``app``: the Starlette application: the page, the JSON API, the live stream, the login;
- ``hub``: the live state, kept while a page watches: stats polled, the event stream followed;
- ``source``: the gRPC adapter (the only module that imports grpc or the generated code);
- ``model``: plain data: VM rows, exit rates, the timeline of slices; ``auth``: the token gate.

This module imports nothing heavy: the CLI reads its defaults when it builds its parser.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_DASHBOARD", "DASHBOARD_ENV", "OFF", "dashboard_default", "parse_dashboard"]

DEFAULT_DASHBOARD = "127.0.0.1:50080"
"""Where ``ringlab up`` and ``ringlab dashboard`` serve the page unless told otherwise."""
DASHBOARD_ENV = "RINGLAB_DASHBOARD"
"""HOST:PORT (or PORT, or ``off``): the setting's environment variable."""
OFF = ("off", "none", "no", "false")
"""Values that turn ``ringlab up``'s dashboard off."""
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WILDCARD = frozenset({"0.0.0.0", "::", "[::]", ""})


def dashboard_default() -> str:
    return os.environ.get(DASHBOARD_ENV, "").strip() or DEFAULT_DASHBOARD


def parse_dashboard(text: str, *, allow_off: bool = True) -> tuple[str, int] | None:
    """``HOST:PORT``, ``PORT`` (on 127.0.0.1) or, with ``allow_off``, ``off`` (None). Raises
    ValueError saying what was expected."""
    value = text.strip()
    if allow_off and value.lower() in OFF:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    expected = "HOST:PORT, PORT" + (" or off" if allow_off else "") + f" (e.g. {DEFAULT_DASHBOARD})"
    if not host or not port_text.isdigit():
        raise ValueError(f"expected {expected}, got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range in {text!r}: a TCP port is 1-65535 (0: any free port)")
    return host.strip("[]") if host.startswith("[") else host, port
