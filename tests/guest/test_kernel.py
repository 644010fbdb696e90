"""Targeted tests of the guest kernel (src/ringlab/guestos/kernel/*.s).

Each test shows the user program it runs (RL-32 source, ``.include "lib.s"`` = the user runtime
in src/ringlab/guestos/workloads/lib.s; program 0 is init, the rest are what it spawns) or names the
workload file.  Errors come back as negative errno values (kernel/abi.s).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ringlab.guestos.build import build_image
from ringlab.machine import RunResult

from .conftest import boot, stats

RunGuest = Callable[..., RunResult]

PRINT_EAX = """
    call print_signed
    mov eax, 10
    call putc
"""


def lines(result: RunResult) -> list[str]:
    return result.console.decode("latin-1").splitlines()


# ---- preemption ----

MULTI_GOLDEN = (
    b"worker 2: step 1\nworker 3: step 1\nworker 4: step 1\n"
    b"worker 2: step 2\nworker 3: step 2\nworker 4: step 2\n"
    b"worker 2: step 3\nworker 4: step 3\nworker 3: step 3\n"
    b"multi: 3 workers done\n"
)


def test_timer_preempts_compute_bound_workers() -> None:
    """workloads/multi.s + multi_worker.s with the defaults: three workers that never yield
    (about 1.2 timer ticks of work per step) interleave their lines, each in step order; the
    exact interleaving is deterministic (the timer counts retired instructions)."""
    result = boot(build_image("multi"))
    assert result.console == MULTI_GOLDEN
    assert (result.reason, result.code) == ("poweroff", 0)
    out = lines(result)[:-1]
    first_three = [line.split(":")[0] for line in out[:3]]
    assert first_three == ["worker 2", "worker 3", "worker 4"]  # not one worker's steps in a row
    for pid in (2, 3, 4):
        assert [line for line in out if line.startswith(f"worker {pid}:")] == [
            f"worker {pid}: step {k}" for k in (1, 2, 3)
        ]
    assert stats(result)["interrupts"] >= 10


def test_multi_is_deterministic() -> None:
    """workloads/multi.s with a short tick: two runs of one image print the same bytes."""
    defines = {"TIMER_PERIOD": 5_000, "WORK": 2_000, "ITERATIONS": 3}
    first, second = (boot(build_image("multi", "stock", defines)) for _ in range(2))
    assert first.console == second.console
    assert len(set(lines(first)[:3])) == 3  # the first round interleaves three workers


def test_processes_in_system_call_loops_are_preempted_too(run_guest: RunGuest) -> None:
    """A tick that lands in the kernel sets need_resched; the process is preempted on its way
    back to ring 3.  Two children spending ~95% of their time in getpid() interleave."""
    init = """
.include "lib.s"
main:
    mov ebx, 1
    call sys_spawn
    mov esi, eax
    mov ebx, 1
    call sys_spawn
    mov ebx, eax
    call sys_wait
    mov ebx, esi
    call sys_wait
    xor eax, eax
    ret
"""
    child = """
.include "lib.s"
main:
    mov edi, 1
.round:
    mov ecx, 300
.calls:
    mov eax, SYS_GETPID
    int 0x80
    dec ecx
    jnz .calls
    call print_dec                  ; eax = pid
    mov eax, ' '
    call putc
    mov eax, edi
    call print_dec
    mov eax, 10
    call putc
    inc edi
    cmp edi, 4
    jne .round
    xor eax, eax
    ret
"""
    result = run_guest(init, child, defines={"TIMER_PERIOD": 8_000})
    out = lines(result)
    assert sorted(out) == ["2 1", "2 2", "2 3", "3 1", "3 2", "3 3"]
    assert out != ["2 1", "2 2", "2 3", "3 1", "3 2", "3 3"]  # child 2 did not run to the end alone
    assert (result.reason, result.code) == ("poweroff", 0)


def test_sleep_with_nothing_runnable_idles_in_hlt(run_guest: RunGuest) -> None:
    """sleep(3) in the only process: the kernel idles in `sti; hlt`, so virtual time runs
    three ticks ahead of the instructions retired."""
    init = """
.include "lib.s"
main:
    mov ebx, 3
    call sys_sleep
    mov ebx, msg
    call print
    xor eax, eax
    ret
msg: .asciz "awake\\n"
"""
    result = run_guest(init, defines={"TIMER_PERIOD": 50_000})
    assert result.console == b"awake\n"
    s = stats(result)
    assert isinstance(s["virtual_time"], int) and isinstance(s["retired"], int)
    assert s["virtual_time"] >= 150_000 > s["retired"]


# ---- faults ----


def test_user_divide_error_kills_only_the_process(run_guest: RunGuest) -> None:
    """The child divides by zero: the kernel reports it, the child exits with 128 + 0, and init
    goes on."""
    init = (
        """
.include "lib.s"
main:
    mov ebx, 1
    call sys_spawn
    mov ebx, eax
    call sys_wait
"""
        + PRINT_EAX
        + """
    mov ebx, msg
    call print
    xor eax, eax
    ret
msg: .asciz "init still here\\n"
"""
    )
    child = """
.include "lib.s"
main:
    xor ecx, ecx
    mov eax, 7
fault_here:
    div ecx
    ret
"""
    result = run_guest(init, child)
    assert re.fullmatch(
        rb"pid 2: divide error at 0x004[0-9a-f]{5}, killed\n128\ninit still here\n", result.console
    ), result.console
    assert (result.reason, result.code) == ("poweroff", 0)


def test_user_faults_are_reported_with_their_vector(run_guest: RunGuest) -> None:
    """#GP (cli in ring 3; int on a vector with no gate), #PF (reading kernel memory), #UD
    (executing zeroed memory): each child is killed with status 128 + vector."""
    init = (
        """
.include "lib.s"
main:
    mov esi, 1
.next:
    mov ebx, esi
    call sys_spawn
    mov ebx, eax
    call sys_wait
"""
        + PRINT_EAX
        + """
    inc esi
    cmp esi, 5
    jne .next
    xor eax, eax
    ret
"""
    )
    cli = '.include "lib.s"\nmain:\n    cli\n    ret\n'
    int3 = '.include "lib.s"\nmain:\n    int 3\n    ret\n'
    kernel_read = '.include "lib.s"\nmain:\n    mov eax, [0x1000]\n    ret\n'
    zeros = '.include "lib.s"\nmain:\n    jmp zeros\nzeros: .space 8\n'
    result = run_guest(init, cli, int3, kernel_read, zeros)
    out = lines(result)
    assert re.fullmatch(r"pid 2: general protection fault at 0x004[0-9a-f]{5}, killed", out[0])
    assert out[1] == "141"
    assert re.fullmatch(r"pid 3: general protection fault at 0x004[0-9a-f]{5}, killed", out[2])
    assert out[3] == "141"
    assert re.fullmatch(r"pid 4: page fault at 0x004[0-9a-f]{5} accessing 0x00001000, killed", out[4])
    assert out[5] == "142"
    assert re.fullmatch(r"pid 5: invalid opcode at 0x004[0-9a-f]{5}, killed", out[6])
    assert out[7] == "134"
    assert (result.reason, result.code) == ("poweroff", 0)


def test_kernel_fault_panics_and_powers_off_nonzero() -> None:
    """workloads/hello.s on a kernel built with -D KERNEL_SELFTEST_PANIC: the kernel reads
    address 0 (never mapped) after boot; it must panic, not limp on."""
    result = boot(build_image("hello", "stock", {"KERNEL_SELFTEST_PANIC": 1}))
    assert re.fullmatch(
        rb"kernel panic: page fault at 0x0000[0-9a-f]{4} accessing 0x00000000 \(error 0x00000000\)\n",
        result.console,
    ), result.console
    assert (result.reason, result.code) == ("poweroff", 1)


# ---- system call arguments ----


def test_write_refuses_pointers_outside_mapped_user_memory(run_guest: RunGuest) -> None:
    """write() with a kernel pointer, an unmapped heap page, a range wrapping past 4 GiB and a
    range running from user into unmapped memory: -EFAULT (-14) each, no kernel fault."""
    init = (
        """
.include "lib.s"
main:
    mov ebx, 0x1000                 ; the kernel's code
    mov ecx, 16
    call sys_write
"""
        + PRINT_EAX
        + """
    mov ebx, USER_HEAP              ; not touched yet: not mapped
    mov ecx, 4
    call sys_write
"""
        + PRINT_EAX
        + """
    mov ebx, 0xFFFFFFF0
    mov ecx, 0x20
    call sys_write
"""
        + PRINT_EAX
        + """
    mov ebx, USER_BASE              ; starts in the program, runs into the hole after it
    mov ecx, 0x10000
    call sys_write
"""
        + PRINT_EAX
        + """
    xor eax, eax
    ret
"""
    )
    result = run_guest(init)
    assert result.console == b"-14\n-14\n-14\n-14\n"
    assert (result.reason, result.code) == ("poweroff", 0)


def test_unknown_system_calls_return_enosys(run_guest: RunGuest) -> None:
    """eax = 0, 12 (one past the last), 99 and -1: -ENOSYS (-38)."""
    calls = "".join(f"    mov eax, {n}\n    int 0x80\n{PRINT_EAX}" for n in (0, 12, 99, 0xFFFFFFFF))
    result = run_guest('.include "lib.s"\nmain:\n' + calls + "    xor eax, eax\n    ret\n")
    assert result.console == b"-38\n-38\n-38\n-38\n"


def test_bad_arguments_return_error_codes(run_guest: RunGuest) -> None:
    """wait() for a non-child, spawn() of a missing program, map() of a misaligned, a kernel
    and an already-mapped page, unmap() of an unmapped page, bench() with an unknown op."""
    body = "".join(
        f"    mov ebx, {ebx}\n    mov ecx, 5\n    call {call}\n{PRINT_EAX}"
        for call, ebx in [
            ("sys_wait", 7),
            ("sys_spawn", 5),
            ("sys_map", "USER_HEAP + 0x123"),
            ("sys_map", "0x00300000"),
            ("sys_map", "USER_HEAP"),
            ("sys_map", "USER_HEAP"),
            ("sys_unmap", "USER_HEAP + PAGE_SIZE"),
            ("sys_bench", 9),
        ]
    )
    result = run_guest('.include "lib.s"\nmain:\n' + body + "    xor eax, eax\n    ret\n")
    assert lines(result) == ["-10", "-22", "-22", "-22", "0", "-17", "-22", "-22"]
    assert (result.reason, result.code) == ("poweroff", 0)


# ---- memory ----


def test_each_process_has_its_own_address_space(run_guest: RunGuest) -> None:
    """Two children store their pid at the same heap address, yield to each other, and read
    back their own value."""
    init = """
.include "lib.s"
main:
    mov ebx, 1
    call sys_spawn
    mov esi, eax
    mov ebx, 1
    call sys_spawn
    mov ebx, eax
    call sys_wait
    mov ebx, esi
    call sys_wait
    xor eax, eax
    ret
"""
    child = """
.include "lib.s"
main:
    call sys_getpid
    mov [USER_HEAP], eax
    call sys_yield
    call sys_yield
    mov eax, [USER_HEAP]
    call print_dec
    mov eax, 10
    call putc
    xor eax, eax
    ret
"""
    result = run_guest(init, child)
    assert sorted(lines(result)) == ["2", "3"]


def test_frames_are_reused_after_exit_in_a_small_machine() -> None:
    """workloads/spawnwait.s, 30 children in a 256 KiB machine (about 40 free frames, 4 per
    child): only works if exit gives every frame back.  A clean power-off (code 0) also means
    the kernel's leak check found all frames home."""
    defines = {"ITERATIONS": 30}
    result = boot(build_image("spawnwait", "stock", defines), memory_size=256 << 10)
    assert result.console == b"spawnwait: 30 children, status sum 495\n"
    assert (result.reason, result.code) == ("poweroff", 0)


def test_running_out_of_memory_kills_the_process_not_the_kernel() -> None:
    """workloads/pagefault.s touching 100 pages in a 256 KiB machine: the page fault that
    finds no free frame kills the process; the kernel frees its frames and powers off 0."""
    result = boot(build_image("pagefault", "stock", {"ITERATIONS": 100}), memory_size=256 << 10)
    assert re.fullmatch(
        rb"pid 1: page fault at 0x004[0-9a-f]{5} accessing 0x005[0-9a-f]{2}000, killed\n", result.console
    ), result.console
    assert (result.reason, result.code) == ("poweroff", 0)


def test_orphans_run_on_after_their_parent_exits(run_guest: RunGuest) -> None:
    """init spawns a child that sleeps and exits at once; the machine powers off only when the
    orphan is done, with no frame leaked."""
    init = '.include "lib.s"\nmain:\n    mov ebx, 1\n    call sys_spawn\n    xor eax, eax\n    ret\n'
    child = """
.include "lib.s"
main:
    mov ebx, 2
    call sys_sleep
    mov ebx, msg
    call print
    xor eax, eax
    ret
msg: .asciz "orphan done\\n"
"""
    result = run_guest(init, child, defines={"TIMER_PERIOD": 10_000})
    assert result.console == b"orphan done\n"
    assert (result.reason, result.code) == ("poweroff", 0)
