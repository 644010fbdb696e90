"""CreateVm by workload name: the hypervisor builds the guest OS itself (any gRPC client can boot
it), raw images stay possible, and a definition that differs from an existing VM's is refused."""

from __future__ import annotations

import grpc
import pytest

from ringlab.guestos import WORKLOADS, build_image
from ringlab.v1 import common_pb2, hypervisor_pb2
from tests.services.conftest import Deployment, unique

HELLO_OUTPUT = b"Hello from ring 3! I am pid 1.\n"


def request(name: str, **fields: object) -> hypervisor_pb2.CreateVmRequest:
    fields.setdefault("technique", common_pb2.TECHNIQUE_HW)
    fields.setdefault("workload", "hello")
    return hypervisor_pb2.CreateVmRequest(name=name, **fields)  # type: ignore[arg-type]


def run(deployment: Deployment, name: str, **fields: object) -> hypervisor_pb2.VmResult:
    hv = deployment.hypervisor_stub()
    hv.CreateVm(request(name, start=True, **fields), timeout=60)
    return hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)


def refusal(deployment: Deployment, req: hypervisor_pb2.CreateVmRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        deployment.hypervisor_stub().CreateVm(req, timeout=60)
    return err.value.code(), err.value.details() or ""


def test_create_by_workload_name_boots_the_guest_os(deployment: Deployment) -> None:
    result = run(deployment, unique("byname"))
    assert result.reason == "poweroff" and result.code == 0
    assert result.console == HELLO_OUTPUT
    assert result.vm.kernel == common_pb2.KERNEL_FLAVOUR_STOCK and result.vm.workload == "hello"


def test_create_by_workload_name_picks_the_paravirt_kernel_under_pv(deployment: Deployment) -> None:
    result = run(deployment, unique("pv"), technique=common_pb2.TECHNIQUE_PV, workload="compute")
    assert result.vm.kernel == common_pb2.KERNEL_FLAVOUR_PARAVIRT
    assert result.reason == "poweroff" and result.console == WORKLOADS["compute"].expected_output()


def test_create_by_workload_name_takes_the_kernel_flavour_asked_for(deployment: Deployment) -> None:
    # A stock kernel under pv, asked for explicitly: built as asked, and pv refuses to run it.
    result = run(
        deployment,
        unique("flavour"),
        technique=common_pb2.TECHNIQUE_PV,
        kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
    )
    assert result.vm.kernel == common_pb2.KERNEL_FLAVOUR_STOCK
    assert result.reason == "refused" and "paravirt" in result.detail


def test_create_by_workload_name_applies_the_defines(deployment: Deployment) -> None:
    defines = {"ROUNDS": 3}
    result = run(deployment, unique("defines"), workload="compute", defines=defines)
    assert dict(result.vm.defines) == defines
    assert result.console == WORKLOADS["compute"].expected_output(defines)
    assert result.console != WORKLOADS["compute"].expected_output()


def test_create_with_an_unknown_workload_lists_the_valid_ones(deployment: Deployment) -> None:
    code, message = refusal(deployment, request(unique("nope"), workload="no-such-workload"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-workload" in message and all(w in message for w in WORKLOADS)


def test_create_with_neither_workload_nor_image_says_what_to_send(deployment: Deployment) -> None:
    code, message = refusal(deployment, request(unique("empty"), workload=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "workload" in message and "image" in message and "Image.to_bytes() of" not in message


@pytest.mark.parametrize(
    ("defines", "words"),
    [
        ({"1ROUNDS": 3}, "is not a name"),
        ({"ROUNDS-X": 3}, "is not a name"),
        ({"ROUNDS": 1 << 32}, "does not fit in 32 bits"),
        ({"ROUNDS": -(1 << 31) - 1}, "does not fit in 32 bits"),
    ],
)
def test_create_with_bad_defines_is_invalid_argument(
    deployment: Deployment, defines: dict[str, int], words: str
) -> None:
    code, message = refusal(deployment, request(unique("baddef"), workload="compute", defines=defines))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message


def test_create_by_workload_name_refuses_kernel_flavour_none(deployment: Deployment) -> None:
    code, message = refusal(deployment, request(unique("none"), kernel=common_pb2.KERNEL_FLAVOUR_NONE))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "KERNEL_FLAVOUR_STOCK" in message


def test_a_raw_image_is_used_as_is_and_the_workload_only_recorded(deployment: Deployment) -> None:
    image = build_image("hello", "stock").to_bytes()
    result = run(
        deployment,
        unique("raw"),
        workload="compute",
        kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
        image=image,
    )
    assert result.console == HELLO_OUTPUT and result.vm.workload == "compute"


# -- the same definition, or ALREADY_EXISTS -----------------------------------------------------


def test_create_again_with_the_same_definition_returns_the_vm_unchanged(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("again")
    first = hv.CreateVm(request(name, workload="compute", defines={"ROUNDS": 3}, weight=512), timeout=60)
    second = hv.CreateVm(request(name, workload="compute", defines={"ROUNDS": 3}, weight=512), timeout=60)
    assert second.id == first.id and second.status == hypervisor_pb2.VM_STATUS_CREATED
    # A built image and the same image sent raw are the same definition (compared by hash).
    image = build_image("compute", "stock", {"ROUNDS": 3}).to_bytes()
    raw = request(
        name,
        workload="compute",
        defines={"ROUNDS": 3},
        weight=512,
        kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
        image=image,
        start=True,  # an action, not part of the definition: starts the VM still created
    )
    third = hv.CreateVm(raw, timeout=60)
    assert third.id == first.id
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    assert result.console == WORKLOADS["compute"].expected_output({"ROUNDS": 3})


@pytest.mark.parametrize(
    ("changed", "words"),
    [
        ({"technique": common_pb2.TECHNIQUE_BT}, "technique: existing 'hw', requested 'bt'"),
        ({"workload": "compute"}, "workload: existing 'hello', requested 'compute'"),
        ({"kernel": common_pb2.KERNEL_FLAVOUR_PARAVIRT}, "kernel: existing 'stock', requested 'paravirt'"),
        ({"defines": {"ROUNDS": 2}}, "defines: existing none, requested ROUNDS=2"),
        ({"weight": 1024}, "weight: existing 256, requested 1024"),
        ({"cap": 50}, "cap: existing 0, requested 50"),
        ({"nested_paging": True}, "nested_paging: existing False, requested True"),
        ({"memory_size": 8 << 20}, "memory_size"),
        ({"max_instructions": 1000}, "max_instructions: existing none, requested 1000"),
        ({"input": b"x"}, "input"),
    ],
)
def test_create_again_with_another_definition_is_already_exists_naming_what_differs(
    deployment: Deployment, changed: dict[str, object], words: str
) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("differs")
    vm = hv.CreateVm(request(name), timeout=60)
    code, message = refusal(deployment, request(name, **changed))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert words in message and "destroy" in message and "another name" in message
    assert hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10) == hv.DescribeVm(
        hypervisor_pb2.VmRef(vm=vm.id), timeout=10
    )
    assert hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).technique == common_pb2.TECHNIQUE_HW


def test_another_raw_image_under_the_same_name_is_already_exists(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("image")
    stock = common_pb2.KERNEL_FLAVOUR_STOCK
    hv.CreateVm(request(name, kernel=stock, image=build_image("hello", "stock").to_bytes()), timeout=60)
    other = build_image("hello", "stock", {"TIMER_PERIOD": 5000}).to_bytes()
    code, message = refusal(deployment, request(name, kernel=stock, image=other))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "image: existing sha256" in message
