"""Cost model: a run's event counts -> simulated cycles, under a cost profile of one hardware era.

``cycles = retired instructions x CPI + sum(event count x cost of the event)``.  Every per-event
cost below names where it comes from.  Where a paper gives no direct figure, the number is an
estimate derived from one that it does give, and the comment says so.

A *profile* is one table of per-event costs (``PROFILES``): ``p4-2006`` (the default) is the
machine Adams & Agesen measured; ``ept-2008`` is the next generation, with nested paging in
hardware and cheaper exits.  A later era's table starts from the earlier one and overrides only
what changed, so a new event is one line in ``P4_2006`` (and one more in ``EPT_2008`` when the era
changed its cost).

[AA06] K. Adams, O. Agesen, "A Comparison of Software and Hardware Techniques for x86
       Virtualization", ASPLOS 2006.  Section 6 / Figure 4 (nanobenchmarks on a 3.8 GHz
       Pentium 4 672 with first-generation VT-x): a VM exit plus the VM entry that resumes the
       guest costs on the order of 1,500 cycles before the VMM does any work (docs/design.md uses the
       same ~1,500-cycle round trip), which is why hardware assist lost to binary translation on
       syscall-, page-table- and I/O-heavy work; the software VMM's translated code handles
       cli/sti/pushf/popf inline for a few cycles, and its callouts and hidden page faults cost
       a trip through the VMM comparable to an exit.  Figure 4's cycles (native / software VMM /
       hardware VMM) are in ``ringlab.cli.bench.paper``.
[BDF03] P. Barham et al., "Xen and the Art of Virtualization", SOSP 2003.  Section 2-4: a
       hypercall is a synchronous software trap into the hypervisor (int 0x82) plus the return,
       and batching page-table updates amortizes it; its lmbench null-syscall results are near
       native.
[BSSM08] R. Bhargava, B. Serebrin, F. Spadini, S. Manne, "Accelerating Two-Dimensional Page
       Walks for Virtualized Systems", ASPLOS 2008.  With nested paging a TLB miss walks the
       guest's n-level table and, for each guest-physical address that walk produces (the
       guest's root, each entry, the final address), the host's n-level table: up to
       (n+1)^2 - 1 memory references against n natively (24 against 4 for x86-64), which is
       why TLB-miss-heavy work can run slower under nested paging than under shadow paging,
       while exit-heavy work (page faults, page-table writes, context switches) runs faster.
       Measured on AMD "Barcelona" (2007-2008) parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ringlab.errors import UsageError
from ringlab.machine.stats import Stats
from ringlab.vmm.counters import EventCounter
from ringlab.vmm.exit_reasons import VmxExitReason

__all__ = [
    "COSTS",
    "DEFAULT_PROFILE",
    "EPT_2008",
    "P4_2006",
    "PROFILES",
    "Profile",
    "core_cycles",
    "cycles",
    "in_guest_cycles",
    "profile",
    "switch_cycles",
    "vmm_cycles",
]

P4_2006: dict[str, int] = {
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
    # [AA06] a BT callout: a jump out of the translation cache into the VMM's C code and back,
    # with the state the translation keeps in registers saved and restored.  Figure 4's
    # software-VMM ``in`` (214 cycles: the translation calls the VMM's device model, no exit, no
    # trap) is one callout plus the device model's work (``io_emulation``): estimate 100 each.
    # An operation the VMM does in a few instructions (a ``cr8`` write to the virtual TPR) costs
    # the callout alone.
    "callout": 100,
    # [AA06] section 6, Figure 4's call/ret: 11 cycles natively, 51 under the software VMM.  A
    # translated indirect branch (``ret``, ``call r``, ``jmp r``) cannot jump to its guest
    # target: it looks the target's translation up in the translation cache's hash table, the
    # 40 cycles the software VMM adds to each call/ret pair.
    "indirect_lookup": 40,
    # [AA06] section 4.2: a guest write to a traced page table before adaptive translation makes
    # the instruction a callout: a #PF into the VMM (a hardware exception round trip, as
    # ``trap``) and the decode and emulation of the write (as ``emulation``): estimate 1,300.
    "traced_write": 1300,
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
    # [AA06] natively, an in/out that reaches a device is a transaction on the (LPC/ISA) I/O
    # bus: Figure 4's native ``in`` is 3,209 cycles (~0.85 us at 3.8 GHz), so estimate 3,000
    # per access.  Priced natively, and under hw for a port whose I/O-bitmap bit is clear (the
    # guest reaches the device itself); otherwise the device is the VMM's model, and what the
    # access costs is the exit, trap, callout or hypercall that reached it.
    "device_io": 3000,
    # [AA06] the VMM's device model serving one emulated port access (an ``in``/``out`` that
    # reached the VMM through a callout, a trap, an exit or a port hypercall): the rest of
    # Figure 4's software-VMM ``in`` after the callout: estimate 100.
    "io_emulation": 100,
    # [AA06] the hardware VMM's I/O exit beyond the exit round trip, the generic emulation and
    # the device model: Figure 4's hardware-VMM ``in`` is 15,826 cycles, ~13,900 more than
    # those; the paper does not break that path down, so this figure is derived from its total,
    # not from a mechanism modelled here.  Paid by every I/O-instruction exit.
    "io_exit": 13900,
    # [BSSM08] one memory reference of a hardware page walk after a TLB miss.  Page-table
    # entries mostly hit in the data caches, so a reference costs about an L2 hit on the P4:
    # estimate 25 cycles.  A miss walks 2 references natively and under shadow paging (RL-32's
    # two-level tables), (2+1)^2 - 1 = 8 under nested paging (``machine.mmu``).
    "walk_reference": 25,
}
"""``p4-2006``: the 3.8 GHz Pentium 4 672 with first-generation VT-x that [AA06] measured."""

EPT_2008: dict[str, int] = {
    **P4_2006,
    # [BSSM08]'s era (AMD Barcelona; Intel's EPT followed in 2008): the VMRUN/VMLAUNCH round
    # trip was cut with each generation after the P4; neither paper gives the figure for these
    # parts, so estimate two thirds of the P4's.
    "vm_exit": 1000,
}
"""``ept-2008``: hardware with nested paging (AMD NPT on Barcelona, Intel EPT) and cheaper
exits; everything not listed costs what it cost in 2006."""


@dataclass(frozen=True)
class Profile:
    """One era's per-event costs (``costs[event]`` in cycles)."""

    name: str
    about: str
    costs: Mapping[str, int]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("p4-2006", "Pentium 4 672, first-generation VT-x, shadow paging only [AA06]", P4_2006),
        Profile("ept-2008", "Barcelona-era hardware: nested paging, cheaper exits [BSSM08]", EPT_2008),
    )
}
DEFAULT_PROFILE = "p4-2006"
"""The profile of every figure that does not name one: the paper's machine."""

COSTS: Mapping[str, int] = P4_2006
"""The default profile's costs."""


def profile(name: str | Profile | None = None) -> Profile:
    """The profile called ``name`` (the default for None); UsageError for an unknown name."""
    if isinstance(name, Profile):
        return name
    found = PROFILES.get(name or DEFAULT_PROFILE)
    if found is None:
        raise UsageError(f"unknown cost profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return found


def cycles(
    technique: str, stats: Stats, counters: EventCounter, cost_profile: str | Profile | None = None
) -> int:
    """Simulated cycles of a run (``stats.guest.cycles``) under ``cost_profile``."""
    return core_cycles(technique, stats, cost_profile) + vmm_cycles(counters, cost_profile)


def core_cycles(technique: str, stats: Stats, cost_profile: str | Profile | None = None) -> int:
    """What the core's own counts cost: instructions, the page walks' memory references, and
    natively the device accesses."""
    c = profile(cost_profile).costs
    total = stats.retired * c["instruction"] + stats.walk_references * c["walk_reference"]
    if technique == "native":
        total += stats.io * c["device_io"]
    return total


_PORT_MNEMONICS = ("in", "out")
_PORT_HYPERCALL = "physdev_op"


def _emulated_port_accesses(counters: EventCounter) -> int:
    """Port accesses the VMM's device models served, other than hw's I/O exits: trapped
    (trap-emulate), called out (bt) and requested by hypercall (pv)."""
    n = counters.hypercalls.get(_PORT_HYPERCALL, 0)
    for mnemonic in _PORT_MNEMONICS:
        n += counters.traps.get(mnemonic, 0)
        how = counters.sensitive.get(mnemonic)
        if how is not None:
            n += how.get("callout", 0)
    return n


def vmm_cycles(counters: EventCounter, cost_profile: str | Profile | None = None) -> int:
    """The cycles the hypervisor's events add to the guest's instructions: its work in world
    switches (``switch_cycles``) and what it adds while the guest runs (``in_guest_cycles``)."""
    return switch_cycles(counters, cost_profile) + in_guest_cycles(counters, cost_profile)


def switch_cycles(counters: EventCounter, cost_profile: str | Profile | None = None) -> int:
    """The cycles of the VMM's work in world switches: exits, traps, callouts, hypercalls and
    what they do (emulation, shadow syncs and flushes, reflected events, device models).  A
    flight recorder prices one exit as what this grew by from its start to the next exit."""
    c = profile(cost_profile).costs
    exits = sum(counters.vm_exits.values())
    traps = sum(counters.traps.values())
    hypercalls = sum(counters.hypercalls.values())
    total = exits * (c["vm_exit"] + c["emulation"])
    io_exits = counters.vm_exits.get(VmxExitReason.IO_INSTRUCTION.label, 0)
    total += io_exits * c["io_exit"]
    total += (io_exits + _emulated_port_accesses(counters)) * c["io_emulation"]
    total += traps * (c["trap"] + c["emulation"])
    total += counters.callouts * c["callout"]
    total += counters.traced_writes * c["traced_write"]
    total += counters.shadow_syncs * c["shadow_sync"] + counters.shadow_flushes * c["shadow_flush"]
    total += counters.reflected * c["reflect"]
    total += hypercalls * (c["hypercall"] + c["emulation"])
    return total


def in_guest_cycles(counters: EventCounter, cost_profile: str | Profile | None = None) -> int:
    """What the VMM adds while the guest runs, with no world switch: bt's inline sensitive
    instructions, indirect-branch lookups and translation, and hw's passed-through device I/O."""
    c = profile(cost_profile).costs
    inline = sum(n for how in counters.sensitive.values() for k, n in how.items() if k == "inline")
    total = inline * c["inline"]
    total += counters.indirect_lookups * c["indirect_lookup"]
    total += counters.translated_instructions * c["translated_instruction"]
    total += counters.io_passthrough * c["device_io"]
    return total
