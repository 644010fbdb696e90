"""What a VM run counts, beyond the core's own ``Stats``.

The core counts instructions retired per ring, exceptions raised and timer interrupts.  The
VMM adds the events that exist only because a hypervisor is there: traps it emulated, VM
exits by reason, hypercalls by name, translations and translation-cache hits, callouts,
shadow page-table work and world switches.  ``hidden`` records exceptions the VMM absorbed
(a shadow page-table miss, a #GP it emulated away) so ``stats.guest.exceptions`` shows only
what the guest itself saw, as natively.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventCounter"]


@dataclass
class EventCounter:
    traps: Counter[str] = field(default_factory=Counter)
    """Trap-and-emulate: privileged instructions that trapped (#GP) and were emulated."""
    vm_exits: Counter[str] = field(default_factory=Counter)
    """``hw``: VM exits by Intel reason (``"CPUID (10)"``)."""
    hypercalls: Counter[str] = field(default_factory=Counter)
    sensitive: dict[str, Counter[str]] = field(default_factory=dict)
    """Mnemonic -> how it was handled (``inline``, ``callout``, ``trap``, ``direct`` ...)."""
    translations: int = 0
    """Guest kernel blocks translated (bt)."""
    translated_instructions: int = 0
    cache_hits: int = 0
    """Translation-cache lookups that found the block."""
    chained: int = 0
    """Block-to-block transfers that followed a chain link without a lookup."""
    cache_invalidations: int = 0
    """Translated blocks dropped because their code page was written."""
    callouts: int = 0
    indirect_lookups: int = 0
    """bt: indirect branches (``ret``, ``call r``, ``jmp r``) in translated code, each one a lookup
    of its target's translation (the translation cannot jump to a guest address)."""
    traced_writes: int = 0
    """bt: guest writes to a traced (write-protected) page table that trapped into the VMM and
    were emulated there, before adaptive translation turned the instruction into a callout."""
    shadow_syncs: int = 0
    """Shadow page-table entries filled from the guest's tables (hidden page faults)."""
    shadow_flushes: int = 0
    """Whole shadow page tables dropped (guest cr3 write, cr0.PG change)."""
    shadow_invalidations: int = 0
    """Single shadow entries dropped (guest ``invlpg``)."""
    world_switches: int = 0
    """Guest -> VMM -> guest round trips (every exit, trap, callout or hypercall)."""
    exits: Counter[str] = field(default_factory=Counter)
    """The world switches by reason, in the technique's own terms (``world_switch``): a VMX exit
    reason (``"CPUID (10)"``), a trapped event (``"#GP"``, ``"timer"``, ``"int 0x30"``), a
    hypercall (``"hypercall 2 (console_write)"``), a bt callout (``"callout cli"``) or a
    ``"traced write"``; they add up to ``world_switches``."""
    on_exit: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    """Called with the reason of each world switch as it begins (the flight recorder)."""
    hidden: Counter[int] = field(default_factory=Counter)
    """Exception vector -> times the core counted it but the VMM absorbed it."""
    reflected: int = 0
    """Events delivered into the guest by the VMM through its virtual IDT."""
    io_passthrough: int = 0
    """``hw``: ``in``/``out`` to a port whose I/O-bitmap bit is clear (no exit: the device is
    reached directly)."""

    def world_switch(self, reason: str) -> None:
        """Count one world switch (the guest left for the VMM) and why: called as the switch
        begins, before anything it does is counted (a flight recorder prices it from here)."""
        self.world_switches += 1
        self.exits[reason] += 1
        if self.on_exit is not None:
            self.on_exit(reason)

    def handled(self, mnemonic: str, how: str) -> None:
        ways = self.sensitive.get(mnemonic)
        if ways is None:
            ways = self.sensitive[mnemonic] = Counter()
        ways[how] = ways.get(how, 0) + 1

    def guest(self) -> dict[str, Any]:
        """Counts the program alone determines (for a given technique)."""
        out: dict[str, Any] = {}
        if self.traps:
            out["traps"] = dict(sorted(self.traps.items()))
        if self.vm_exits:
            out["vm_exits"] = dict(
                sorted(self.vm_exits.items(), key=lambda kv: int(kv[0].split("(")[1][:-1]))
            )
        if self.hypercalls:
            out["hypercalls"] = dict(sorted(self.hypercalls.items()))
        if self.sensitive:
            out["sensitive"] = {m: dict(sorted(c.items())) for m, c in sorted(self.sensitive.items())}
        out.update(
            translations=self.translations,
            translated_instructions=self.translated_instructions,
            callouts=self.callouts,
            indirect_lookups=self.indirect_lookups,
            traced_writes=self.traced_writes,
            shadow_syncs=self.shadow_syncs,
            shadow_flushes=self.shadow_flushes,
            shadow_invalidations=self.shadow_invalidations,
            reflected=self.reflected,
            world_switches=self.world_switches,
            exits=dict(sorted(self.exits.items())),
        )
        if self.io_passthrough:
            out["io_passthrough"] = self.io_passthrough
        return out

    def host(self) -> dict[str, Any]:
        """Counts that depend on how the VMM's caches happened to behave."""
        return {
            "translation_cache_hits": self.cache_hits,
            "translation_chained": self.chained,
            "translation_invalidations": self.cache_invalidations,
        }
