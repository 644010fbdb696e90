"""``ringlab vm create --launcher process|docker`` and the clean-up on ``vm destroy``.

The glue between the ``vm`` commands (``deployment.py``) and the launchers (``launch.py``): with
a launcher, ``vm create`` does not create the VM itself; it starts a guest service (a local
process, or a container on the compose deployment's network) that builds its image, creates its VM
on the hypervisor and serves its console, and waits until the hypervisor knows the VM.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ringlab.cli.launch import LaunchError, LaunchSpec, guest_spec, make_launcher
from ringlab.errors import DeploymentFailed
from ringlab.vmm import default_kernel

__all__ = ["add_launcher_flags", "create_via_launcher", "remove_launched"]

REGISTER_TIMEOUT = 120.0
"""A container on the vfs storage driver can take tens of seconds to start."""


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--launcher",
        choices=["process", "docker"],
        default=None,
        help="start a guest service that owns the VM: a local process, or a container on the compose "
        "deployment's network through the Docker SDK (choices: process, docker; default: none, the CLI "
        "creates the VM itself)",
    )
    parser.add_argument(
        "--image",
        default=None,
        metavar="DOCKER_IMAGE",
        help="the Docker image to launch the guest container from, with --launcher docker (default: "
        "$RINGLAB_IMAGE or ringlab:latest); not a guest image: see --workload and --program",
    )


def create_via_launcher(args: argparse.Namespace, stub: Any) -> Any:
    """Launch the guest service for ``args.name`` and return the VM it created (a hypervisor ``Vm``).

    Raises UsageError (status 2) for settings a guest service does not take, and
    ``ringlab.errors.DeploymentFailed`` (status 3) when the launch or the VM's registration fails."""
    import grpc

    from ringlab.errors import UsageError
    from ringlab.v1 import hypervisor_pb2

    unsupported = [
        flag
        for flag, given in (
            ("--nested-paging", args.nested_paging),
            ("--cap", args.cap),
            ("--program", getattr(args, "program", None)),
            ("-D", getattr(args, "defines", None)),
        )
        if given
    ]
    if unsupported:
        raise UsageError(
            f"{', '.join(unsupported)}: not guest service settings: create the VM without --launcher "
            "to use them"
        )
    kernel = args.kernel or default_kernel(args.technique)
    spec = guest_spec(
        args.name,
        technique=args.technique,
        kernel=kernel,
        workload=args.workload or "hello",
        weight=args.weight,
        launcher=args.launcher,
        hypervisor=args.hypervisor,
        redis=os.environ.get("RINGLAB_REDIS"),
        token=getattr(args, "token", None) or os.environ.get("RINGLAB_TOKEN"),
    )
    if args.launcher == "process":
        spec = _with_guest_credentials(spec, args)
    try:
        launcher = make_launcher(args.launcher, image=args.image)
        launched = launcher.launch(spec)
    except LaunchError as err:
        raise DeploymentFailed(str(err)) from None
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while True:
        try:
            return stub.DescribeVm(hypervisor_pb2.VmRef(vm=args.name), timeout=10)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                where = f"process {launched.ref}, log {launched.detail}"
                if launched.launcher == "docker":
                    where = f"container {launched.detail}: docker logs {launched.detail}"
                raise DeploymentFailed(
                    f"the guest for {args.name!r} started ({where}) but its VM did not "
                    f"appear on the hypervisor within {REGISTER_TIMEOUT:.0f}s: {err.details()}"
                ) from None
        time.sleep(0.5)


def _with_guest_credentials(spec: LaunchSpec, args: argparse.Namespace) -> LaunchSpec:
    """A local guest for a ``ringlab up`` of this user gets its own VM's credentials (0600, in
    the deployment's ``secrets/`` folder: its data folder, ``$RINGLAB_DATA`` or up's default
    for the hypervisor's port), never the operator's token; without that folder, the operator's
    token as before (docs/security.md)."""
    from pathlib import Path

    from ringlab.rpc.local import SECRETS_DIR, default_state_dir
    from ringlab.store.credentials import SECRET_FILE, DeploymentSecrets, write_private

    port = str(args.hypervisor).rpartition(":")[2]
    data = os.environ.get("RINGLAB_DATA") or (str(default_state_dir(int(port))) if port.isdigit() else "")
    folder = Path(data).expanduser() / SECRETS_DIR if data else None
    if folder is None or not (folder / SECRET_FILE).is_file():
        return spec
    try:
        operator = getattr(args, "token", None) or os.environ.get("RINGLAB_TOKEN", "")
        made = DeploymentSecrets.load_or_create(folder, operator)
        path = folder / f"guest-{spec.name}.json"
        write_private(path, made.for_role("guest", guest_name=spec.name, redis=False).to_json())
    except OSError:
        return spec
    env = {k: v for k, v in spec.env.items() if k != "RINGLAB_TOKEN"} | {"RINGLAB_CREDENTIALS": str(path)}
    return LaunchSpec(spec.name, spec.command, env)


def remove_launched(name: str) -> list[str]:
    """Stop and remove the guest services launched for ``name`` (either launcher); what was removed.

    Quiet where there is nothing to remove: no record, no Docker SDK, or no engine."""
    removed = []
    for kind in ("process", "docker"):
        try:
            removed += [
                f"{item.launcher} {item.detail or item.ref}" for item in make_launcher(kind).remove(name)
            ]
        except LaunchError:
            continue
    return removed
