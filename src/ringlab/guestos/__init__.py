"""The Ringlab guest OS as data: its kernel and workloads in RL-32 assembly (``kernel/*.s``,
``workloads/*.s``) and the builder that links them into a bootable image.  Domain code: the
guest service, the hypervisor (which builds images for clients that name a workload), the CLI and
the benchmarks all build images through it."""

from ringlab.guestos.build import (
    FLAVOURS,
    NO_KERNEL,
    WORKLOADS,
    KernelFlavour,
    Workload,
    build_custom_image,
    build_image,
    build_programs,
)

__all__ = [
    "FLAVOURS",
    "NO_KERNEL",
    "WORKLOADS",
    "KernelFlavour",
    "Workload",
    "build_custom_image",
    "build_image",
    "build_programs",
]
