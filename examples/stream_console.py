"""Create a VM by workload name and print its console as it is committed (a server stream),
using the generated gRPC stubs directly.  Run:

    python examples/stream_console.py [HOST:PORT] [WORKLOAD] [--token TOKEN]

The address defaults to $RINGLAB_HYPERVISOR, else 127.0.0.1:50051; the token to $RINGLAB_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default=os.environ.get("RINGLAB_HYPERVISOR", "127.0.0.1:50051"))
    parser.add_argument("workload", nargs="?", default="io")
    parser.add_argument("--token", default=os.environ.get("RINGLAB_TOKEN", ""))
    return parser.parse_args()


def run(
    hypervisor: hypervisor_pb2_grpc.HypervisorStub,
    workload: str,
    metadata: tuple[tuple[str, str | bytes], ...],
) -> None:
    vm = hypervisor.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=f"console-{workload}",
            technique=common_pb2.TECHNIQUE_NATIVE,
            workload=workload,  # no image: the hypervisor builds the guest OS with this workload
            start=True,
        ),
        metadata=metadata,
        timeout=60,
    )
    # follow=True: the stream stays open until the VM ends; each chunk is one commit.
    request = hypervisor_pb2.StreamConsoleRequest(vm=vm.id, follow=True)
    for chunk in hypervisor.StreamConsole(request, metadata=metadata):
        sys.stdout.write(chunk.data.decode("latin-1"))
        sys.stdout.flush()


def main() -> int:
    args = arguments()
    metadata: tuple[tuple[str, str | bytes], ...] = (
        (("authorization", f"Bearer {args.token}"),) if args.token else ()
    )
    with grpc.insecure_channel(args.target) as channel:
        try:
            run(hypervisor_pb2_grpc.HypervisorStub(channel), args.workload, metadata)
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
