"""Hostile guest programs beside normal VMs, on one pCPU of a locked-down deployment (issue 14,
item 6): programs that read and map memory beyond their RAM, load page tables from nowhere,
make malformed hypercalls, triple fault, halt, or spin with interrupts off.  Each ends only
itself (as its technique says it must), the spinners are preempted by the slice and stopped by
the operator, and the normal VMs beside them print exactly their workloads' output."""

from __future__ import annotations

from ringlab.asm import assemble
from ringlab.guestos.build import WORKLOADS
from ringlab.v1 import hypervisor_pb2
from tests.security.conftest import Secure, create, status_of, unique, wait, wait_status

HOSTILE = {
    "read-beyond-ram": "mov eax, [0x7FFFFFF0]\nout 0xF4, eax\n",
    "write-beyond-ram": "mov eax, 0x41414141\nmov [0x7FFFFFF0], eax\nout 0xF4, eax\n",
    "page-tables-from-nowhere": (
        "mov eax, 0x7FFFF000\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n"
        "mov eax, [0x1000]\nout 0xF4, eax\n"
    ),
    "triple-fault": "mov eax, 0\ndiv eax\n",
    "halt-interrupts-off": "cli\nhlt\n",
    "spin-interrupts-off": "cli\ntop: jmp top\n",
    "spin-interrupts-on": "sti\ntop: jmp top\n",
    "bad-hypercalls": (
        "mov eax, 999\nint 0x82\n"  # no such hypercall
        "mov eax, 1\nmov ebx, 0xFFFFFFF0\nmov ecx, 512\nmov edx, 0xFFFFFFF0\nint 0x82\n"  # mmu_update, list beyond RAM
        "mov eax, 18\nmov ebx, 0\nmov ecx, 100000\nmov edx, 0x7FFFFFF0\nint 0x82\n"  # console_io, too long, beyond RAM
        "mov eax, 26\nmov ebx, 5\nmov ecx, 0x7FFFF000\nint 0x82\n"  # a page directory beyond RAM
        "mov eax, 33\nmov ebx, 0\nmov ecx, 0xF4\nmov edx, 0\nint 0x82\n"  # a port it may not use
        "mov eax, 29\nmov ebx, 2\nmov ecx, 0\nmov edx, 7\nint 0x82\n"  # then power off, code 7
    ),
}
ENDS = {
    "read-beyond-ram": "shutdown",
    "write-beyond-ram": "shutdown",
    "page-tables-from-nowhere": "shutdown",
    "triple-fault": "shutdown",
    "halt-interrupts-off": "halted",
    "spin-interrupts-off": None,  # never ends by itself
    "spin-interrupts-on": None,
    "bad-hypercalls": "poweroff",  # under pv: every bad call is an error code, then it powers off
}
NORMAL = (("native", "hello"), ("bt", "hello"), ("hw", "hello"), ("pv", "hello"), ("hw", "compute"))


def test_hostile_guests_end_only_themselves_beside_normal_vms(secure: Secure) -> None:
    hv = secure.hv()
    hostile = {}
    for n, (what, source) in enumerate(HOSTILE.items()):
        run_as = "pv" if what == "bad-hypercalls" else ("native", "bt", "hw")[n % 3]
        name = unique(what)
        create(hv, name, technique=run_as, program=assemble(".entry start\nstart:\n" + source).to_bytes())
        hostile[name] = what
    normal = {}
    for run_as, workload in NORMAL:
        name = unique(f"{run_as}-{workload}")
        create(hv, name, technique=run_as, workload=workload)
        normal[name] = workload
    for name, workload in normal.items():
        result = wait(hv, name)
        assert WORKLOADS[workload].check_output(result.console), (name, result.console[-300:])
        assert status_of(hv, name) == "poweroff"
    for name, what in hostile.items():
        if ENDS[what] is None:
            assert status_of(hv, name) in {"running", "runnable"}, (name, status_of(hv, name))
            hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
            wait_status(hv, name, {"stopped"})
        else:
            wait(hv, name)
            assert status_of(hv, name) == ENDS[what], (what, status_of(hv, name))
        if what == "bad-hypercalls":
            assert wait(hv, name).code == 7
    for name in [*hostile, *normal]:
        hv.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
