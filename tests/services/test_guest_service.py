"""The guest service: it owns one VM (created idempotently by name), serves its console, and
identical replicas take the entries of a mix list in turn."""

from __future__ import annotations

import argparse
import threading

import pytest

from ringlab.rpc import StreamSlots, open_channel
from ringlab.store import InvalidRequest
from ringlab.v1 import guest_pb2, guest_pb2_grpc, hypervisor_pb2
from ringlab_guest.service import (
    GuestConfig,
    GuestServicer,
    parse_mix,
    register_until_done,
    resolve_config,
    serve,
    validate,
)
from tests.services.conftest import Deployment, service_config, unique


def test_guest_registers_its_vm_idempotently_and_streams_its_console(deployment: Deployment) -> None:
    name = unique("guest")
    config = GuestConfig(name, "hw", "stock", "hello", 256)
    servicer = GuestServicer(config, deployment.hypervisor_target, "", StreamSlots(2))
    vm = servicer.register()
    assert servicer.register() == vm  # a restarted guest re-attaches to the same VM
    server = serve(service_config("guest", deployment.redis.url), servicer)
    try:
        stub = guest_pb2_grpc.GuestStub(open_channel(f"127.0.0.1:{server.port}"))
        info = stub.DescribeGuest(guest_pb2.DescribeGuestRequest(), timeout=10)
        assert info.vm == vm and info.workload == "hello"
        hv = deployment.hypervisor_stub()
        hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=60), timeout=90)
        text = b"".join(
            c.data for c in stub.StreamConsole(guest_pb2.GuestConsoleRequest(follow=True), timeout=30)
        )
        assert text == b"Hello from ring 3! I am pid 1.\n"
    finally:
        server.stop(1)


def test_replicas_take_the_next_mix_entry_and_keep_it(deployment: Deployment) -> None:
    mix = "native:stock:hello,bt:stock:compute:512"
    name = unique("mix")

    def args(replica: str) -> argparse.Namespace:
        return argparse.Namespace(name=name, mix=mix, replica_id=replica)

    first = resolve_config(args("a"), deployment.state)
    second = resolve_config(args("b"), deployment.state)
    again = resolve_config(args("a"), deployment.state)
    assert (first.name, first.technique) == (f"{name}-0", "native")
    assert (second.name, second.technique, second.weight) == (f"{name}-1", "bt", 512)
    assert again == first


def test_bad_guest_configuration_says_what_to_choose() -> None:
    with pytest.raises(InvalidRequest, match="TECHNIQUE:KERNEL:WORKLOAD"):
        parse_mix("native:stock")
    with pytest.raises(InvalidRequest, match="choose one of"):
        validate(GuestConfig("g", "native", "stock", "no-such-workload", 256))


def test_a_guest_the_hypervisor_refuses_stops_retrying_and_says_why(deployment: Deployment) -> None:
    servicer = GuestServicer(
        GuestConfig("not a valid name!", "native", "stock", "hello", 256),
        deployment.hypervisor_target,
        "",
        StreamSlots(1),
    )
    failed: list[str] = []
    assert not register_until_done(servicer, threading.Event(), failed)
    assert len(failed) == 1 and failed[0].startswith("INVALID_ARGUMENT") and "name" in failed[0]
    assert servicer.vm == ""


def test_a_guest_keeps_trying_while_the_hypervisor_is_not_up() -> None:
    servicer = GuestServicer(
        GuestConfig("later", "native", "stock", "hello", 256), "127.0.0.1:1", "", StreamSlots(1)
    )
    stopping = threading.Event()
    failed: list[str] = []
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(register_until_done(servicer, stopping, failed)))
    worker.start()
    worker.join(timeout=2.5)
    assert worker.is_alive()  # still retrying: an unreachable hypervisor may come up
    stopping.set()
    worker.join(timeout=10)
    assert done == [False] and failed == []


def test_the_guest_console_of_a_destroyed_vm_is_not_found_without_a_traceback(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    import grpc

    name = unique("gone")
    servicer = GuestServicer(
        GuestConfig(name, "hw", "stock", "hello", 256), deployment.hypervisor_target, "", StreamSlots(2)
    )
    servicer.register()
    hv = deployment.hypervisor_stub()
    hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=60), timeout=90)
    assert hv.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10).destroyed
    server = serve(service_config("guest", deployment.redis.url), servicer)
    try:
        stub = guest_pb2_grpc.GuestStub(open_channel(f"127.0.0.1:{server.port}"))
        caplog.clear()
        for follow in (False, True):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.StreamConsole(guest_pb2.GuestConsoleRequest(follow=follow), timeout=30))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert name in (err.value.details() or "")
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    finally:
        server.stop(1)


def test_a_guest_whose_name_another_definition_took_stops_with_already_exists(deployment: Deployment) -> None:
    name = unique("taken")
    first = GuestServicer(
        GuestConfig(name, "native", "stock", "hello", 256), deployment.hypervisor_target, "", StreamSlots(1)
    )
    first.register()
    other = GuestServicer(
        GuestConfig(name, "hw", "stock", "hello", 256), deployment.hypervisor_target, "", StreamSlots(1)
    )
    failed: list[str] = []
    assert not register_until_done(other, threading.Event(), failed)
    assert len(failed) == 1 and failed[0].startswith("ALREADY_EXISTS") and "technique" in failed[0]
