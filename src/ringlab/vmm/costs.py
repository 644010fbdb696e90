"""Cost model: a run's event counts -> simulated cycles on a 2006-era x86 (Pentium 4 class).

``cycles = retired instructions x CPI + sum(event count x cost of the event)``.  Every per-event
cost below names where it comes from.  Two sources are the published measurements the design
names; where a paper gives no direct figure, the number is an estimate derived from one that
it does give, and the comment says so.

[AA06] K. Adams, O. Agesen, "A Comparison of Software and Hardware Techniques for x86
       Virtualization", ASPLOS 2006.  Section 6 / Figure 4 (microbenchmarks on a 3.8 GHz
       Pentium 4 672 with first-generation VT-x): a VM exit plus the VM entry that resumes the
       guest costs on the order of 1,500 cycles before the VMM does any work (docs/design.md uses the
       same ~1,500-cycle round trip), which is why hardware assist lost to binary translation on
       syscall-, page-table- and I/O-heavy work; the software VMM's translated code handles
       cli/sti/pushf/popf inline for a few cycles, and its callouts and hidden page faults cost
       a trip through the VMM comparable to an exit.
[BDF03] P. Barham et al., "Xen and the Art of Virtualization", SOSP 2003.  Section 2-4: a
       hypercall is a synchronous software trap into the hypervisor (int 0x82) plus the return,
       and batching page-table updates amortizes it; its lmbench null-syscall results are near
       native.
"""

from __future__ import annotations

from ringlab.machine.stats import Stats
from ringlab.vmm.counters import EventCounter

__all__ = ["COSTS", "cycles", "vmm_cycles"]

COSTS: dict[str, int] = {
    # One retired guest instruction: CPI 1 (the unit; virtual time counts instructions too).
    "instruction": 1,
    # [AA06] VM exit + VM entry round trip on first-generation VT-x, ~1,500 cycles; the exit
    # handler's own work is extra (below).
    "vm_exit": 1500,
    # [AA06] the software VMM's emulation work after a trap or exit (decode, emulate against the
    # virtual CPU, resume): estimate, a few hundred cycles of VMM code.
    "emulation": 300,
    # [AA06] trap-and-emulate: a #GP trap into the (ring 0) VMM and the return; a hardware
    # exception round trip on the P4 is of the order of a VM exit: estimate 1,000 cycles.
    "trap": 1000,
    # [AA06] a translated sensitive instruction done inline on the virtual CPU (cli, sti, pushf,
    # popf...): "a few cycles" - estimate 5.
    "inline": 5,
    # [AA06] a BT callout: a jump out of the translation cache into VMM C code and back; the
    # paper's software VMM in/out and cr3 costs are hundreds to ~1,000 cycles: estimate 400.
    "callout": 400,
    # [AA06] translating a guest block: the translator's per-instruction work, estimate 100
    # cycles per instruction translated (paid once per block, amortized by the cache).
    "translated_instruction": 100,
    # [AA06] a hidden page fault that fills a shadow entry: a trap into the VMM plus a walk of
    # the guest's page table; the paper's page-fault microbenchmark shows these dominate
    # (thousands of cycles): estimate 2,000 (plus the exit under hw).
    "shadow_sync": 2000,
    # [AA06] dropping the whole shadow on a guest cr3 write: estimate 1,000.
    "shadow_flush": 1000,
    # [AA06] an event (exception, interrupt, int n) reflected into the guest by the VMM: the
    # trap into the VMM and the bounce onto the guest's stack, estimate 1,000.
    "reflect": 1000,
    # [BDF03] a hypercall: int 0x82 into ring 0 and the return, on the P4 about the cost of a
    # system call round trip, estimate 300, plus the hypervisor's work (emulation).
    "hypercall": 300,
}


def cycles(technique: str, stats: Stats, counters: EventCounter) -> int:
    """Simulated cycles of a run (``stats.guest.cycles``)."""
    return stats.retired * COSTS["instruction"] + vmm_cycles(counters)


def vmm_cycles(counters: EventCounter) -> int:
    """The cycles the hypervisor's events add to the guest's instructions."""
    c = COSTS
    exits = sum(counters.vm_exits.values())
    traps = sum(counters.traps.values())
    inline = sum(n for how in counters.sensitive.values() for k, n in how.items() if k == "inline")
    hypercalls = sum(counters.hypercalls.values())
    total = exits * (c["vm_exit"] + c["emulation"])
    total += traps * (c["trap"] + c["emulation"])
    total += inline * c["inline"]
    total += counters.callouts * (c["callout"] + c["emulation"])
    total += counters.translated_instructions * c["translated_instruction"]
    total += counters.shadow_syncs * c["shadow_sync"] + counters.shadow_flushes * c["shadow_flush"]
    total += counters.reflected * c["reflect"]
    total += hypercalls * (c["hypercall"] + c["emulation"])
    return total
