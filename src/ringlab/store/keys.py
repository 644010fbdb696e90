"""Every Redis key Ringlab uses, in one place.

All keys start with ``rl:``.  A VM's keys share the hash tag ``{vm:ID}`` so a Redis Cluster would
keep them on one shard; the scheduler's keys are global because one decision spans every VM.

    rl:vm:seq                    INCR: the next VM id
    rl:vm:names                  hash  name -> id (create is idempotent for the same definition)
    rl:{vm:ID}:record            hash  the VM's definition and how it ended
    rl:{vm:ID}:image             string  Image.to_bytes() (kept for replays and for StartVm of an
                                         ended VM, which boots it afresh: reboot_vm.lua)
    rl:{vm:ID}:vcpu              hash  state (CpuState JSON), stats (JSON), vmm (JSON), generation,
                                       token (of the last commit)
    rl:{vm:ID}:pages             hash  page number -> 4 KiB of guest-physical memory
    rl:{vm:ID}:console           stream  console bytes, one entry per commit
    rl:{vm:ID}:flight            stream  the flight recorder's records, one entry per slice (a JSON
                                         list: its exits and the slice itself; capped)
    rl:sched:vms                 hash  id -> scheduler entry (JSON: status, credit, weight, cap,
                                       token, pcpu, lease_until, boost, cpu_seconds, boot: how
                                       many times StartVm booted it afresh, ...)
    rl:sched:meta                hash  version (bumped by every change to rl:sched:vms)
    rl:fence                     INCR: fencing tokens, one per grant, never reused
    rl:events                    stream  lifecycle and scheduling events
    rl:commits                   stream  the commit log: every applied or refused commit (vm, its
                                         token, the grant current then, generations, retired;
                                         capped), read by ``ringlab chaos``' checker
    rl:pcpus                     hash  pcpu id -> gRPC address
    rl:pcpu:ID:alive             string with a TTL: the cpu service's heartbeat
    rl:pcpu:ID:driver            string with a TTL: the hypervisor replica driving this pCPU
    rl:pcpu:ID:stats             hash  busy_seconds, scheduler_seconds, slices, world_switches
    rl:guest:mix:NAME            hash  next, replica:HOST -> index: replicas take mix entries in turn
"""

from __future__ import annotations

__all__ = [
    "COMMITS",
    "EVENTS",
    "FENCE",
    "PCPUS",
    "SCHED_META",
    "SCHED_VMS",
    "VM_NAMES",
    "VM_SEQ",
    "guest_mix",
    "pcpu_alive",
    "pcpu_driver",
    "pcpu_stats",
    "vm_console",
    "vm_image",
    "vm_keys",
    "vm_pages",
    "vm_record",
    "vm_vcpu",
]

VM_SEQ = "rl:vm:seq"
VM_NAMES = "rl:vm:names"
SCHED_VMS = "rl:sched:vms"
SCHED_META = "rl:sched:meta"
FENCE = "rl:fence"
EVENTS = "rl:events"
COMMITS = "rl:commits"
PCPUS = "rl:pcpus"


def vm_record(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:record"


def vm_image(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:image"


def vm_vcpu(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:vcpu"


def vm_pages(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:pages"


def vm_console(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:console"


def vm_flight(vm: str) -> str:
    return f"rl:{{vm:{vm}}}:flight"


def vm_keys(vm: str) -> list[str]:
    """Every key that belongs to one VM (destroy deletes them together)."""
    return [vm_record(vm), vm_image(vm), vm_vcpu(vm), vm_pages(vm), vm_console(vm), vm_flight(vm)]


def pcpu_alive(pcpu: str) -> str:
    return f"rl:pcpu:{pcpu}:alive"


def pcpu_driver(pcpu: str) -> str:
    return f"rl:pcpu:{pcpu}:driver"


def pcpu_stats(pcpu: str) -> str:
    return f"rl:pcpu:{pcpu}:stats"


def guest_mix(name: str) -> str:
    return f"rl:guest:mix:{name}"
