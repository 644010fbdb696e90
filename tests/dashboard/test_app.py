"""The dashboard's HTTP side, with a stand-in for the hypervisor (the browser test drives a real
one): the login and the token, the guard against requests from other sites and other names,
bad input, and the deployment's refusals, each a JSON error and never a traceback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from ringlab.dashboard.app import create_app
from ringlab.dashboard.hub import Hub
from ringlab.dashboard.source import CreateSpec, SourceError

TOKEN = "teacher-token"
CHANGE = {"X-Ringlab-Request": "1"}


class FakeStream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self.events
        self.cancelled.wait(10)

    def cancel(self) -> None:
        self.cancelled.set()


class FakeSource:
    """Answers as the hypervisor would, from a dict of VMs."""

    target = "127.0.0.1:1"

    def __init__(self) -> None:
        self.vms: dict[str, dict[str, Any]] = {}
        self.created: list[CreateSpec] = []

    def _vm(self, name: str) -> dict[str, Any]:
        if name not in self.vms:
            raise SourceError(404, f"{self.target}: NOT_FOUND: no VM named or numbered {name!r}")
        return self.vms[name]

    def stats(self) -> dict[str, Any]:
        return {"vms": list(self.vms.values()), "pcpus": [{"pcpu": "pcpu0", "alive": True}]}

    def events(self, after: str = "") -> FakeStream:
        return FakeStream(
            [
                {"cursor": "1-0", "kind": "exit", "vm": "1", "pcpu": "pcpu0", "detail": "io x2", "time": 1.0},
                {"cursor": "2-0", "kind": "descheduled", "vm": "1", "pcpu": "pcpu0",
                 "detail": "preempted 1.0 1.5 0.5", "time": 1.5},
            ]
        )  # fmt: skip

    def console(self, vm: str, after: str = "") -> tuple[str, str]:
        self._vm(vm)
        return ("" if after else "Hello from ring 3!\n"), "5-0"

    def create(self, spec: CreateSpec) -> dict[str, Any]:
        if spec.name in self.vms:
            raise SourceError(409, f"{self.target}: ALREADY_EXISTS: VM {spec.name!r} exists")
        self.created.append(spec)
        vm = {"id": str(len(self.vms) + 1), "name": spec.name, "technique": spec.technique,
              "status": "runnable", "exits": 0, "exits_by_reason": {}}  # fmt: skip
        self.vms[spec.name] = vm
        return vm

    def act(self, vm: str, action: str) -> dict[str, Any]:
        found = self._vm(vm)
        found["status"] = {"pause": "paused", "resume": "runnable"}.get(action, found["status"])
        return found

    def destroy(self, vm: str) -> bool:
        return self.vms.pop(vm, None) is not None


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


def client(source: FakeSource, token: str = "", **kwargs: Any) -> TestClient:
    app = create_app(source, token=token, hub=Hub(source, interval=0.05), log=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:50080")


def test_with_no_operator_token_the_page_is_open(source: FakeSource) -> None:
    with client(source) as c:
        assert c.get("/").status_code == 200 and "app.js" in c.get("/").text
        session = c.get("/api/session").json()
        assert session["auth_required"] is False and session["authenticated"] is True
        assert "hello" in session["workloads"] and "bt" in session["techniques"]
        made = c.post(
            "/api/vms", json={"name": "web", "technique": "bt", "workload": "hello"}, headers=CHANGE
        )
        assert made.status_code == 201 and made.json()["name"] == "web"
        state = c.get("/api/state").json()
        assert [vm["name"] for vm in state["vms"]] == ["web"] and state["error"] is None


def test_the_operator_token_is_asked_and_a_session_kept(source: FakeSource) -> None:
    with client(source, TOKEN) as c:
        assert c.get("/api/session").json() == {**c.get("/api/session").json(), "auth_required": True,
                                                  "authenticated": False}  # fmt: skip
        for method, path in (("get", "/api/state"), ("get", "/api/live"), ("get", "/api/vms/web/console")):
            answer = getattr(c, method)(path)
            assert answer.status_code == 401 and "operator's token" in answer.json()["error"]
        assert c.post("/api/vms", json={"name": "web"}, headers=CHANGE).status_code == 401
        wrong = c.post("/api/login", json={"token": "guess"}, headers=CHANGE)
        assert wrong.status_code == 401 and "not the operator's token" in wrong.json()["error"]
        assert c.post("/api/login", json={}, headers=CHANGE).status_code == 400
        ok = c.post("/api/login", json={"token": TOKEN}, headers=CHANGE)
        assert ok.status_code == 200
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN not in cookie
        assert c.get("/api/session").json()["authenticated"] is True
        assert c.get("/api/state").status_code == 200
        assert c.post("/api/logout", json={}, headers=CHANGE).status_code == 200
        assert c.get("/api/state").status_code == 401
    with client(source, TOKEN) as c:  # a script: the token as a bearer token
        assert c.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/state", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_requests_that_change_something_must_come_from_the_page(source: FakeSource) -> None:
    with client(source) as c:
        body = {"name": "web", "technique": "bt", "workload": "hello"}
        plain = c.post("/api/vms", json=body)  # what a form on another site could send
        assert plain.status_code == 403 and "X-Ringlab-Request" in plain.json()["error"]
        other = c.post("/api/vms", json=body, headers={**CHANGE, "Origin": "http://evil.example"})
        assert other.status_code == 403 and "evil.example" in other.json()["error"]
        assert c.delete("/api/vms/web").status_code == 403
        own = c.post("/api/vms", json=body, headers={**CHANGE, "Origin": "http://127.0.0.1:50080"})
        assert own.status_code == 201
        assert source.created[0] == CreateSpec("web", "bt", "hello")
        more = {
            "name": "busy",
            "technique": "hw",
            "workload": "syscall",
            "iterations": 5000,
            "nested_paging": True,
        }
        assert c.post("/api/vms", json=more, headers=CHANGE).status_code == 201
        assert source.created[1] == CreateSpec(
            "busy", "hw", "syscall", nested_paging=True, defines={"ITERATIONS": 5000}
        )


def test_only_the_names_it_answers_to(source: FakeSource) -> None:
    with client(source, allowed_hosts=frozenset({"127.0.0.1", "localhost"})) as c:
        assert c.get("/healthz").text == "ok"
        rebound = c.get("/", headers={"Host": "attacker.example"})
        assert rebound.status_code == 421 and "--allow-host" in rebound.text
    with client(source) as c:  # allowed_hosts None: any name
        assert c.get("/", headers={"Host": "projector.lan"}).status_code == 200


def test_every_asset_is_served_here_with_a_strict_policy(source: FakeSource) -> None:
    with client(source) as c:
        page = c.get("/")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing outside
        for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
            answer = c.get(asset)
            assert answer.status_code == 200, asset
            assert "https://" not in answer.text and "http://" not in answer.text.replace(
                "http://www.w3.org/2000/svg", ""
            ), asset


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "bad name"}, "not a VM name"),
        ({"name": "x" * 64}, "not a VM name"),
        ({"name": "web", "technique": "vmx"}, "technique: 'vmx' is not one of"),
        ({"name": "web", "workload": "doom"}, "workload: 'doom' is not one of"),
        ({"name": "web", "kernel": "linux"}, "kernel: 'linux'"),
        ({"name": "web", "technique": "bt", "nested_paging": True}, "only under the hw technique"),
        ({"name": "web", "weight": 0}, "weight: a whole number from 1 to 65535"),
        ({"name": "web", "weight": "lots"}, "weight"),
        ({"name": "web", "start": "yes"}, "start: true or false"),
        ({"name": "web", "iterations": 0}, "iterations: a whole number from 1 to"),
        ({"name": "web", "iterations": "many"}, "iterations: a whole number from 1 to"),
    ],
)
def test_bad_input_is_a_clear_error(source: FakeSource, body: dict[str, Any], says: str) -> None:
    with client(source) as c:
        answer = c.post("/api/vms", json=body, headers=CHANGE)
        assert answer.status_code == 400 and says in answer.json()["error"], answer.text
        assert "Traceback" not in answer.text


def test_malformed_requests_and_refusals(source: FakeSource) -> None:
    with client(source) as c:
        not_json = c.post(
            "/api/vms", content=b"{oops", headers={**CHANGE, "Content-Type": "application/json"}
        )
        assert not_json.status_code == 400 and "JSON object" in not_json.json()["error"]
        assert c.post("/api/vms", json=[1, 2], headers=CHANGE).status_code == 400
        missing = c.post("/api/vms/ghost/pause", headers=CHANGE)
        assert missing.status_code == 404 and "NOT_FOUND" in missing.json()["error"]
        assert c.post("/api/vms/web/reboot", headers=CHANGE).status_code in (400, 404)
        c.post("/api/vms", json={"name": "web"}, headers=CHANGE)
        again = c.post("/api/vms", json={"name": "web"}, headers=CHANGE)
        assert again.status_code == 409 and "ALREADY_EXISTS" in again.json()["error"]
        assert c.get("/api/vms/web/console?after=nonsense").status_code == 400
        assert c.post("/api/vms/web/pause", headers=CHANGE).json()["status"] == "paused"
        assert c.post("/api/vms/web/resume", headers=CHANGE).json()["status"] == "runnable"
        first = c.get("/api/vms/web/console").json()
        assert first == {"vm": "web", "data": "Hello from ring 3!\n", "cursor": "5-0"}
        assert c.get("/api/vms/web/console?after=5-0").json()["data"] == ""
        assert c.delete("/api/vms/web", headers=CHANGE).json() == {"destroyed": True, "vm": "web"}


def test_an_unexpected_failure_is_a_message_not_a_traceback(source: FakeSource) -> None:
    def broken(spec: CreateSpec) -> dict[str, Any]:
        raise RuntimeError("the disk is on fire")

    source.create = broken  # type: ignore[method-assign]
    with client(source) as c:
        answer = c.post("/api/vms", json={"name": "web"}, headers=CHANGE)
        assert answer.status_code == 500
        assert answer.json() == {"error": "internal error: RuntimeError: the disk is on fire"}


def test_an_unreachable_hypervisor_is_said_on_the_page(source: FakeSource) -> None:
    def down() -> dict[str, Any]:
        raise SourceError(503, "127.0.0.1:1: UNAVAILABLE: nothing answers there")

    source.stats = down  # type: ignore[method-assign]
    with client(source) as c:
        state = c.get("/api/state").json()
        assert state["error"] == "127.0.0.1:1: UNAVAILABLE: nothing answers there"


def test_the_live_view_carries_the_timeline(source: FakeSource) -> None:
    source.create(CreateSpec("web", "bt", "hello"))
    hub = Hub(source, interval=0.05)
    hub.watch()
    try:
        deadline = threading.Event()
        for _ in range(100):
            doc, since = hub.view(0)
            if doc["slices"] and doc["vms"]:
                break
            deadline.wait(0.05)
        assert doc["slices"][0]["exits"] == {"io": 2} and doc["slices"][0]["vm"] == "1"
        assert hub.view(since)[0]["slices"] == []  # each slice is sent once
    finally:
        hub.unwatch()
        hub.close()


def test_nobody_watching_costs_the_deployment_nothing(source: FakeSource) -> None:
    """The poll and the event stream (a stream slot of the hypervisor's) run only while a page
    watches, and a little longer (``linger``)."""
    streams: list[FakeStream] = []
    polls: list[int] = []
    real_events, real_stats = source.events, source.stats

    def events(after: str = "") -> FakeStream:
        streams.append(real_events(after))
        return streams[-1]

    def stats() -> dict[str, Any]:
        polls.append(1)
        return real_stats()

    source.events = events  # type: ignore[method-assign]
    source.stats = stats  # type: ignore[method-assign]
    hub = Hub(source, interval=0.02, linger=0.2)
    try:
        hub.watch()
        _until(lambda: streams and polls, "the first page starts the poll and the stream")
        hub.unwatch()
        _until(lambda: all(s.cancelled.is_set() for s in streams), "the stream ends after the linger")
        _until(lambda: hub._poller is None, "the poll stops after the linger")
        before = len(polls)
        threading.Event().wait(0.3)
        assert len(polls) == before
        hub.watch()  # a page comes back: both again
        _until(lambda: len(polls) > before and not streams[-1].cancelled.is_set(), "a page comes back")
        hub.unwatch()
    finally:
        hub.close()


def _until(check: Any, what: str) -> None:
    for _ in range(400):
        if check():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"{what}: not within 10 s")
