"""Start four compute-bound VMs with weights 1:1:2:4 and watch their CPU shares converge,
using the generated gRPC stubs directly.  Run:  python examples/watch_contention.py [HOST:PORT]"""

from __future__ import annotations

import sys
import time

import grpc

from ringlab.guestos.build import build_image
from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

WEIGHTS = {"w1a": 256, "w1b": 256, "w2": 512, "w4": 1024}


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    # A long compute run (ROUNDS is the workload's loop count) so the VMs contend for a while.
    image = build_image("compute", "stock", {"ROUNDS": 2000}).to_bytes()
    with grpc.insecure_channel(target) as channel:
        hypervisor = hypervisor_pb2_grpc.HypervisorStub(channel)
        for name, weight in WEIGHTS.items():
            hypervisor.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=f"contend-{name}",
                    technique=common_pb2.TECHNIQUE_NATIVE,
                    kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                    workload="compute",
                    image=image,
                    weight=weight,
                    start=True,
                )
            )
        for _ in range(20):
            time.sleep(0.5)
            stats = hypervisor.GetStats(hypervisor_pb2.GetStatsRequest())
            line = "  ".join(
                f"{vm.name[8:]}={vm.stats.cpu_share * 100:5.1f}%"
                for vm in stats.vms
                if vm.name.startswith("contend-")
            )
            print(line, flush=True)
        for name in WEIGHTS:
            hypervisor.StopVm(hypervisor_pb2.VmRef(vm=f"contend-{name}"))


if __name__ == "__main__":
    main()
