"""A deployment with a token: a call without one and a call with a wrong one are both
UNAUTHENTICATED, with different messages, and neither message echoes what was sent."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from ringlab.rpc import open_channel
from ringlab.store import LocalRedis
from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc
from tests.services.conftest import Deployment, start_deployment

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(redis_server: LocalRedis) -> Iterator[Deployment]:
    d = start_deployment(redis_server, token=TOKEN, db=3)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def refusal(d: Deployment, token: str, *, stream: bool = False) -> tuple[grpc.StatusCode, str]:
    stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor_target, token))
    with pytest.raises(grpc.RpcError) as err:
        if stream:
            list(stub.StreamEvents(hypervisor_pb2.StreamEventsRequest(), timeout=10))
        else:
            stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10)
    return err.value.code(), err.value.details() or ""


@pytest.mark.parametrize("stream", [False, True])
def test_a_missing_token_and_a_wrong_token_get_different_messages(guarded: Deployment, stream: bool) -> None:
    missing = refusal(guarded, "", stream=stream)
    wrong = refusal(guarded, "not-the-token", stream=stream)
    assert missing[0] == wrong[0] == grpc.StatusCode.UNAUTHENTICATED
    assert missing[1].startswith(
        "no bearer token was sent: this deployment requires one (set RINGLAB_TOKEN or pass --token)"
    )
    assert wrong[1] == "the bearer token sent is not this deployment's (check RINGLAB_TOKEN / --token)"
    assert "not-the-token" not in wrong[1] and TOKEN not in missing[1] + wrong[1]


def test_the_right_token_is_let_through(guarded: Deployment) -> None:
    stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(guarded.hypervisor_target, TOKEN))
    assert list(stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms) == []
