"""``ringlab up`` as a real subprocess, for the tests of ``up`` (test_cli_up.py,
test_up_supervisor.py): start it, collect its output, read its services.json, talk to its
hypervisor through the kills and restarts the tests inflict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from ringlab.store.server import free_port

START_TIMEOUT = 300.0
"""A safety net: the services start in a few seconds even on a busy machine."""
EVENT_TIMEOUT = 180.0
"""A safety net for waiting on something ``up`` does (a restart, a VM's end), not a measure."""

T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RINGLAB_HYPERVISOR", "RINGLAB_TOKEN")}
    return {**env, **extra}


def ringlab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env=env or clean_env(),
        stdin=subprocess.DEVNULL,
    )


def wait_for(what: str, check: Callable[[], T | None], timeout: float = EVENT_TIMEOUT) -> T:
    """Poll ``check`` until it returns something other than None (or False); fail saying ``what``
    did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Up:
    """A ``ringlab up`` in the background, its output collected as it comes."""

    process: subprocess.Popen[str]
    target: str
    state: Path
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    serving: threading.Event = field(default_factory=threading.Event)
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, state: Path, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Up:
        """``ringlab up --listen 127.0.0.1:FREE --data STATE EXTRA...``; with ``wait``, returns once
        it printed its hint (it serves)."""
        target = f"127.0.0.1:{free_port()}"
        process = subprocess.Popen(
            [sys.executable, "-m", "ringlab.cli", "up", "--listen", target, "--data", str(state), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env or clean_env(),
        )
        up = cls(process, target, state)
        for stream, lines in ((process.stdout, up.out), (process.stderr, up.err)):
            reader = threading.Thread(target=up._collect, args=(stream, lines), daemon=True)
            reader.start()
            up.readers.append(reader)
        if wait:
            assert up.serving.wait(START_TIMEOUT) and process.poll() is None, "".join(up.out + up.err)
        return up

    def _collect(self, stream: IO[str], lines: list[str]) -> None:
        with stream:  # closed at its end, so no pipe is left for the garbage collector
            for line in iter(stream.readline, ""):
                lines.append(line)
                if line.startswith("or first: export RINGLAB_HYPERVISOR"):  # the last line of the hint
                    self.serving.set()
        self.serving.set()  # it ended: the waiter looks at the process

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout: float = 60) -> int:
        status = self.process.wait(timeout=timeout)
        for reader in self.readers:  # the whole output, and both pipes closed
            reader.join(timeout=10)
        return status

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def said(self, text: str) -> str:
        """``up``'s stderr once ``text`` is in it.  ``up`` says a restart before it rewrites
        services.json, but this process reads the pipe in its own thread, which a busy host can
        leave behind the file (CI once read the stderr before the line had arrived)."""
        return wait_for(f"up said {text!r}", lambda: self.stderr if text in self.stderr else None)

    # -- services.json ---------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.state / "services.json").read_text())
        return loaded

    def service(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(s for s in self.record()["services"] if s["name"] == name)
        return found

    def kill(self, name: str, sig: int = signal.SIGKILL) -> dict[str, Any]:
        """Send ``sig`` to the service ``name`` (as services.json names it); returns its entry."""
        entry = self.service(name)
        os.kill(entry["pid"], sig)
        return entry

    def await_restart(self, before: dict[str, Any]) -> dict[str, Any]:
        """The entry of the service ``before`` named once services.json shows it restarted, in
        another process: ``before``'s restarts + 1 and a live pid."""

        def restarted() -> dict[str, Any] | None:
            now = self.service(before["name"])
            if (
                now["restarts"] == before["restarts"] + 1
                and now["pid"] != before["pid"]
                and alive(now["pid"])
            ):
                return now
            return None

        return wait_for(f"{before['name']} restarted", restarted)


# -- the hypervisor, through restarts ---------------------------------------------------------------
def hypervisor_stub(target: str) -> Any:
    from ringlab.rpc import open_channel
    from ringlab.v1 import hypervisor_pb2_grpc

    return hypervisor_pb2_grpc.HypervisorStub(open_channel(target))


def retrying(what: str, call: Callable[[], T], timeout: float = EVENT_TIMEOUT) -> T:
    """``call()``, again and again while it fails with a gRPC error (a service of the deployment
    is restarting), until it succeeds or ``timeout`` passes (then its last error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def create_vm(target: str, name: str, image: Any, technique: str, workload: str = "multi") -> str:
    """Create and start a VM running ``image`` (built from ``workload``); returns its id."""
    from ringlab.rpc.convert import TECHNIQUES
    from ringlab.v1 import common_pb2, hypervisor_pb2

    request = hypervisor_pb2.CreateVmRequest(
        name=name,
        technique=TECHNIQUES[technique],
        kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
        workload=workload,
        image=image.to_bytes(),
        start=True,
    )
    # wait_for_ready: a hypervisor the supervisor just restarted may not listen yet
    vm: str = hypervisor_stub(target).CreateVm(request, timeout=60, wait_for_ready=True).id
    return vm


def describe(target: str, name: str) -> Any:
    from ringlab.v1 import hypervisor_pb2

    return hypervisor_stub(target).DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)


def await_slices(target: str, name: str, slices: int = 2) -> None:
    """Wait until the VM has run ``slices`` slices (some of its commits have landed)."""
    wait_for(f"{name} ran {slices} slices", lambda: describe(target, name).stats.slices >= slices)


def vm_names(target: str) -> set[str]:
    from ringlab.v1 import hypervisor_pb2

    stub = hypervisor_stub(target)
    reply = retrying("ListVms", lambda: stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10))
    return {vm.name for vm in reply.vms}


def wait_vm(target: str, name: str) -> Any:
    """The VM's result once it has ended, asked again across the deployment's restarts."""
    from ringlab.v1 import hypervisor_pb2

    stub = hypervisor_stub(target)
    request = hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=int(EVENT_TIMEOUT))
    return retrying(f"{name} ended", lambda: stub.WaitVm(request, timeout=EVENT_TIMEOUT + 30))


def kill_all(pids: Iterator[int] | list[int]) -> None:
    """SIGKILL whichever of ``pids`` still run (a test's cleanup after killing ``up`` itself)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
