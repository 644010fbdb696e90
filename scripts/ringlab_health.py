#!/opt/ringlab/bin/python
"""Ask a gRPC server's standard health service whether it is SERVING; exit 0 if so, 1 if not.

The compose file's health checks run this inside each service's container (the image installs
it as ``ringlab-health``), so that ``depends_on: condition: service_healthy`` waits for the real
checks the services drive (Redis reachable, pCPU registered), not merely for an open port.

Usage: ringlab-health [HOST:PORT] [--service NAME] [--timeout SECONDS]
The address defaults to this container's own server: the port of RINGLAB_LISTEN on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2


def default_target() -> str:
    listen = os.environ.get("RINGLAB_LISTEN", "")
    _, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise SystemExit("ringlab-health: give HOST:PORT, or set RINGLAB_LISTEN=HOST:PORT")
    return f"127.0.0.1:{port}"


def check(target: str, service: str, timeout: float) -> tuple[bool, str]:
    with grpc.insecure_channel(target) as channel:
        # The method by name: the health stub's typing stubs do not declare Check.
        health_check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply: health_pb2.HealthCheckResponse = health_check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call):
                return False, f"{target}: {err.code().name}: {err.details()}"
            return False, f"{target}: {err}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringlab-health", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="HOST:PORT (default: 127.0.0.1 and RINGLAB_LISTEN's port)")
    parser.add_argument("--service", default="", help='service name to ask about ("" = the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    ok, message = check(args.target or default_target(), args.service, args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
