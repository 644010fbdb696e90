"""Create one VM under each technique on a running deployment (``ringlab up``), by workload name
(the hypervisor builds the guest OS), using the generated gRPC stubs directly.  Run:

    python examples/create_vms.py [HOST:PORT] [--token TOKEN]

The address defaults to $RINGLAB_HYPERVISOR, else 127.0.0.1:50051; the token to $RINGLAB_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

TECHNIQUES = {
    "native": common_pb2.TECHNIQUE_NATIVE,
    "trap-emulate": common_pb2.TECHNIQUE_TRAP_EMULATE,
    "bt": common_pb2.TECHNIQUE_BT,
    "pv": common_pb2.TECHNIQUE_PV,  # the hypervisor picks the paravirt kernel for pv
    "hw": common_pb2.TECHNIQUE_HW,
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default=os.environ.get("RINGLAB_HYPERVISOR", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("RINGLAB_TOKEN", ""))
    return parser.parse_args()


def run(
    hypervisor: hypervisor_pb2_grpc.HypervisorStub, metadata: tuple[tuple[str, str | bytes], ...]
) -> None:
    for name, technique in TECHNIQUES.items():
        request = hypervisor_pb2.CreateVmRequest(
            name=f"example-{name}",  # creating the same VM twice returns the same VM
            technique=technique,
            workload="hello",  # no image: the hypervisor builds the kernel + the hello workload
            start=True,
        )
        vm = hypervisor.CreateVm(request, metadata=metadata, timeout=60)
        print(f"created VM {vm.id} {vm.name}")
    for name in TECHNIQUES:
        wait = hypervisor_pb2.WaitVmRequest(vm=f"example-{name}", timeout_seconds=60)
        result = hypervisor.WaitVm(wait, metadata=metadata, timeout=90)
        print(f"{name:>13}: {result.reason} {result.console.decode('latin-1').strip()!r}")


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
