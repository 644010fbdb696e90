"""Create one VM under each technique on a running deployment (``ringlab up``), using the
generated gRPC stubs directly.  Run:  python examples/create_vms.py [HOST:PORT]"""

from __future__ import annotations

import sys

import grpc

from ringlab.guestos.build import build_image
from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

TECHNIQUES = {
    "native": common_pb2.TECHNIQUE_NATIVE,
    "trap-emulate": common_pb2.TECHNIQUE_TRAP_EMULATE,
    "bt": common_pb2.TECHNIQUE_BT,
    "hw": common_pb2.TECHNIQUE_HW,
}


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    with grpc.insecure_channel(target) as channel:
        hypervisor = hypervisor_pb2_grpc.HypervisorStub(channel)
        image = build_image("hello", "stock").to_bytes()  # the stock kernel + the hello workload
        for name, technique in TECHNIQUES.items():
            request = hypervisor_pb2.CreateVmRequest(
                name=f"example-{name}",  # creating the same name twice returns the same VM
                technique=technique,
                kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                workload="hello",
                image=image,
                start=True,
            )
            vm = hypervisor.CreateVm(request)
            print(f"created VM {vm.id} {vm.name}")
        for name in TECHNIQUES:
            result = hypervisor.WaitVm(hypervisor_pb2.WaitVmRequest(vm=f"example-{name}", timeout_seconds=60))
            print(f"{name:>13}: {result.reason} {result.console.decode('latin-1').strip()!r}")


if __name__ == "__main__":
    main()
