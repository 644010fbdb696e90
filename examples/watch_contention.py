"""Start four compute-bound VMs with weights 1:1:2:4 and watch their CPU shares converge, using
the generated gRPC stubs directly.  Run:

    python examples/watch_contention.py [HOST:PORT] [--token TOKEN]

The address defaults to $RINGLAB_HYPERVISOR, else 127.0.0.1:50051; the token to $RINGLAB_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc

from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

WEIGHTS = {"w1a": 256, "w1b": 256, "w2": 512, "w4": 1024}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default=os.environ.get("RINGLAB_HYPERVISOR", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("RINGLAB_TOKEN", ""))
    return parser.parse_args()


def run(
    hypervisor: hypervisor_pb2_grpc.HypervisorStub, metadata: tuple[tuple[str, str | bytes], ...]
) -> None:
    for name, weight in WEIGHTS.items():
        hypervisor.CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=f"contend-{name}",
                technique=common_pb2.TECHNIQUE_NATIVE,
                workload="compute",
                # A long compute run (ROUNDS is the workload's loop count) so the VMs contend.
                defines={"ROUNDS": 2000},
                weight=weight,
                start=True,
            ),
            metadata=metadata,
            timeout=60,
        )
        # A second run of this script: the VMs it stopped last time boot afresh.
        hypervisor.StartVm(hypervisor_pb2.VmRef(vm=f"contend-{name}"), metadata=metadata, timeout=60)
    for _ in range(20):
        time.sleep(0.5)
        stats = hypervisor.GetStats(hypervisor_pb2.GetStatsRequest(), metadata=metadata, timeout=30)
        line = "  ".join(
            f"{vm.name[8:]}={vm.stats.cpu_share * 100:5.1f}%"
            for vm in stats.vms
            if vm.name.startswith("contend-")
        )
        print(line, flush=True)
    for name in WEIGHTS:
        hypervisor.StopVm(hypervisor_pb2.VmRef(vm=f"contend-{name}"), metadata=metadata, timeout=30)


def main() -> int:
    args = arguments()
    metadata: tuple[tuple[str, str | bytes], ...] = (
        (("authorization", f"Bearer {args.token}"),) if args.token else ()
    )
    with grpc.insecure_channel(args.target) as channel:
        try:
            run(hypervisor_pb2_grpc.HypervisorStub(channel), metadata)
        except grpc.RpcError as err:  # one line, not a traceback: what failed and what to do
            print(
                f"{args.target}: {err.code().name}: {err.details()}{ADVICE.get(err.code(), '')}",
                file=sys.stderr,
            )
            return 3
    return 0


ADVICE = {
    grpc.StatusCode.UNAVAILABLE: " (nothing answers there: start a deployment with 'ringlab up', or set "
    "RINGLAB_HYPERVISOR to its address)",
    grpc.StatusCode.UNAUTHENTICATED: " (set RINGLAB_TOKEN or pass --token)",
}

if __name__ == "__main__":
    sys.exit(main())
