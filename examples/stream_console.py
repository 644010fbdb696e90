"""Create a VM and print its console as it is committed (a server stream), using the generated
gRPC stubs directly.  Run:  python examples/stream_console.py [HOST:PORT] [WORKLOAD]"""

from __future__ import annotations

import sys

import grpc

from ringlab.guestos.build import build_image
from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    workload = sys.argv[2] if len(sys.argv) > 2 else "io"
    with grpc.insecure_channel(target) as channel:
        hypervisor = hypervisor_pb2_grpc.HypervisorStub(channel)
        vm = hypervisor.CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=f"console-{workload}",
                technique=common_pb2.TECHNIQUE_NATIVE,
                kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                workload=workload,
                image=build_image(workload, "stock").to_bytes(),
                start=True,
            )
        )
        # follow=True: the stream stays open until the VM ends; each chunk is one commit.
        for chunk in hypervisor.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=vm.id, follow=True)):
            sys.stdout.write(chunk.data.decode("latin-1"))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
