"""The dashboard as a Starlette application.

    GET  /                              the page (static/index.html; static/app.js draws it)
    GET  /static/...                    its script, style sheet and icon: every asset is served here
    GET  /healthz                       "ok" (no login: for health checks)
    GET  /api/session                   whether a login is needed and done; what the create form offers
    POST /api/login {"token": T}        the operator's token -> a session cookie; POST /api/logout
    GET  /api/live                      server-sent events: one JSON view per change (see Hub.view)
    GET  /api/state                     one such view (for scripts)
    POST /api/vms {name, technique, workload, kernel, nested_paging, weight, iterations, start}
    POST /api/vms/NAME/start|pause|resume|stop;  DELETE /api/vms/NAME
    GET  /api/vms/NAME/console?after=CURSOR      {"data", "cursor"}: the console since a cursor

Every /api route but session, login and logout wants the operator's token when the deployment
has one (``auth.Gate``). A request that changes something must carry the header
``X-Ringlab-Request: 1`` (a page of another site cannot send it without the browser asking this
server first, which it never allows: no CSRF) and, if it says where it comes from, come from
here. Errors are JSON ``{"error": MESSAGE}`` with a 4xx or 5xx status: never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ringlab.dashboard.auth import COOKIE, SESSION_SECONDS, Gate
from ringlab.dashboard.hub import Hub
from ringlab.dashboard.source import CreateSpec, HypervisorSource, SourceError
from ringlab.guestos import FLAVOURS, WORKLOADS
from ringlab.vmm import TECHNIQUES

__all__ = ["STATIC", "create_app"]

STATIC = Path(__file__).with_name("static")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ACTIONS = ("start", "pause", "resume", "stop")
MAX_WEIGHT = 65535
MAX_ITERATIONS = 2**31 - 1
HEARTBEAT_SECONDS = 15.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """ASGI middleware: the Host header must name this server (no DNS rebinding onto a page bound
    to loopback), and every answer carries the security headers (CSP: nothing but this server)."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.allowed is not None and host not in self.allowed:
            names = ", ".join(sorted(self.allowed))
            response = PlainTextResponse(
                f"this dashboard answers to {names}, not {host or 'a request without a Host'}: "
                "start it with --allow-host NAME to be reached by another name",
                status_code=421,
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_name(value: str) -> str:
    """``127.0.0.1:50080`` -> ``127.0.0.1``; ``[::1]:50080`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def create_app(
    source: HypervisorSource,
    *,
    token: str = "",
    allowed_hosts: frozenset[str] | None = None,
    hub: Hub | None = None,
    log: Callable[[str], None] | None = None,
) -> Starlette:
    """The application for the hypervisor ``source`` calls; ``token``: the operator's (the page
    then asks for it); ``allowed_hosts``: the names the Host header may give (None: any)."""
    gate = Gate(token)
    hub = hub or Hub(source)
    say = log or (lambda text: print(f"ringlab dashboard: {text}", file=sys.stderr, flush=True))

    def api(*, login: bool = True, changes: bool = False) -> Callable[[Endpoint], Endpoint]:
        def wrap(endpoint: Endpoint) -> Endpoint:
            async def run(request: Request) -> Response:
                if changes:
                    problem = _unsafe_request_problem(request)
                    if problem:
                        return _error(403, problem)
                if login and not gate.allows(session=request.cookies.get(COOKIE), bearer=_bearer(request)):
                    return _error(
                        401, "log in with the operator's token (the token the deployment was given)"
                    )
                try:
                    return await endpoint(request)
                except BadRequest as exc:
                    return _error(400, str(exc))
                except SourceError as exc:
                    return _error(exc.status, exc.message)
                except Exception as exc:  # never a traceback to the page; one line to the log
                    say(f"internal error in {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
                    return _error(500, f"internal error: {type(exc).__name__}: {exc}")

            run.__name__ = endpoint.__name__
            return run

        return wrap

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @api(login=False)
    async def session(request: Request) -> Response:
        return JSONResponse(
            {
                "auth_required": gate.required,
                "authenticated": gate.allows(session=request.cookies.get(COOKIE), bearer=_bearer(request)),
                "target": source.target,
                "techniques": list(TECHNIQUES),
                "workloads": {name: w.description for name, w in WORKLOADS.items()},
                "kernels": list(FLAVOURS),
            }
        )

    @api(login=False, changes=True)
    async def login(request: Request) -> Response:
        body = await _json_body(request)
        offered = body.get("token")
        if not isinstance(offered, str) or not offered:
            raise BadRequest('give the operator\'s token: {"token": "..."}')
        if not gate.required:
            return JSONResponse({"authenticated": True})
        if not gate.token_ok(offered):
            await asyncio.sleep(0.5)  # a guesser gets two tries a second per connection
            return _error(401, "that is not the operator's token")
        response = JSONResponse({"authenticated": True})
        response.set_cookie(
            COOKIE,
            gate.open_session(),
            max_age=int(SESSION_SECONDS),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @api(login=False, changes=True)
    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            gate.close_session(cookie)
        response = JSONResponse({"authenticated": False})
        response.delete_cookie(COOKIE, path="/")
        return response

    @api()
    async def state(request: Request) -> Response:
        hub.watch()
        try:
            await run_in_threadpool(hub.wait_polled, 10.0)  # the first poll, if this started it
            doc, _ = hub.view(0)
            return JSONResponse(doc)
        finally:
            hub.unwatch()

    @api()
    async def live(request: Request) -> Response:
        async def events() -> Any:
            hub.watch()
            try:
                version, since, beat = -1, 0, asyncio.get_running_loop().time()
                while not closing.is_set():
                    if hub.version != version:
                        version = hub.version
                        doc, since_next = hub.view(since)
                        since = since_next
                        yield f"data: {json.dumps(doc, separators=(',', ':'))}\n\n"
                        beat = asyncio.get_running_loop().time()
                    elif asyncio.get_running_loop().time() - beat > HEARTBEAT_SECONDS:
                        yield ": still here\n\n"
                        beat = asyncio.get_running_loop().time()
                    await asyncio.sleep(0.2)
            finally:
                hub.unwatch()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    @api(changes=True)
    async def create_vm(request: Request) -> Response:
        spec = _create_spec(await _json_body(request))
        vm = await run_in_threadpool(source.create, spec)
        hub.poke()
        return JSONResponse(vm, status_code=201)

    @api(changes=True)
    async def act(request: Request) -> Response:
        name, action = _vm_name(request), request.path_params["action"]
        if action not in ACTIONS:
            raise BadRequest(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        vm = await run_in_threadpool(source.act, name, action)
        hub.poke()
        return JSONResponse(vm)

    @api(changes=True)
    async def destroy(request: Request) -> Response:
        name = _vm_name(request)
        done = await run_in_threadpool(source.destroy, name)
        hub.poke()
        return JSONResponse({"destroyed": done, "vm": name})

    @api()
    async def console(request: Request) -> Response:
        name = _vm_name(request)
        after = request.query_params.get("after", "")
        if after and not re.fullmatch(r"\d{1,20}-\d{1,20}", after):
            raise BadRequest(f"after={after!r} is not a console cursor (from an earlier answer's 'cursor')")
        data, cursor = await run_in_threadpool(source.console, name, after)
        return JSONResponse({"vm": name, "data": data, "cursor": cursor})

    closing = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        closing.set()  # the live streams end, so that the server stops at once
        await run_in_threadpool(hub.close)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/api/session", session),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/state", state),
        Route("/api/live", live),
        Route("/api/vms", create_vm, methods=["POST"]),
        Route("/api/vms/{vm}", destroy, methods=["DELETE"]),
        Route("/api/vms/{vm}/console", console),
        Route("/api/vms/{vm}/{action}", act, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    app.state.gate = gate
    app.add_middleware(Guard, allowed_hosts=allowed_hosts)
    return app


# -- request checks ------------------------------------------------------------------------------------
def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _unsafe_request_problem(request: Request) -> str | None:
    if request.headers.get("x-ringlab-request") != "1":
        return "a request that changes something must carry the header X-Ringlab-Request: 1"
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin.rstrip("/").lower() != own.lower():
            return f"a request from {origin} may not change anything here"
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise BadRequest("the request body is too large (at most 64 KiB)")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _vm_name(request: Request) -> str:
    name = str(request.path_params["vm"])
    if not NAME.match(name):
        raise BadRequest(f"{name!r} is not a VM name or id (letters, digits, '.', '_', '-'; at most 63)")
    return name


def _create_spec(body: dict[str, Any]) -> CreateSpec:
    name = body.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadRequest(
            f"name: {name!r} is not a VM name: 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    technique = body.get("technique", "native")
    if technique not in TECHNIQUES:
        raise BadRequest(f"technique: {technique!r} is not one of {', '.join(TECHNIQUES)}")
    workload = body.get("workload", "hello")
    if workload not in WORKLOADS:
        raise BadRequest(f"workload: {workload!r} is not one of {', '.join(WORKLOADS)}")
    kernel = body.get("kernel") or ""
    if kernel not in ("", *FLAVOURS):
        raise BadRequest(f"kernel: {kernel!r} is not one of {', '.join(FLAVOURS)} (or empty: the default)")
    nested = body.get("nested_paging", False)
    if not isinstance(nested, bool):
        raise BadRequest("nested_paging: true or false")
    if nested and technique != "hw":
        raise BadRequest("nested_paging: only under the hw technique")
    weight = body.get("weight", 256)
    if isinstance(weight, str) and weight.strip().isdigit():
        weight = int(weight)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
        raise BadRequest(
            f"weight: a whole number from 1 to {MAX_WEIGHT} (the credit scheduler's), got {weight!r}"
        )
    start = body.get("start", True)
    if not isinstance(start, bool):
        raise BadRequest("start: true or false")
    iterations = body.get("iterations")
    if iterations in (None, ""):
        defines = {}
    else:
        if isinstance(iterations, str) and iterations.strip().isdigit():
            iterations = int(iterations)
        if (
            not isinstance(iterations, int)
            or isinstance(iterations, bool)
            or not 1 <= iterations <= MAX_ITERATIONS
        ):
            raise BadRequest(
                f"iterations: a whole number from 1 to {MAX_ITERATIONS} (the workload's -D ITERATIONS), "
                f"or nothing for its default; got {iterations!r}"
            )
        defines = {"ITERATIONS": iterations}
    return CreateSpec(
        name=name,
        technique=technique,
        workload=workload,
        kernel=kernel,
        nested_paging=nested,
        weight=weight,
        start=start,
        defines=defines,
    )
