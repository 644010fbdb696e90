"""``SharedState``'s atomic operations against a real Redis: what each one promises (idempotent
creates, fenced commits, versioned grants, lifecycle actions that revoke grants)."""

from __future__ import annotations

from typing import Any

import pytest

from ringlab.sched import Entry
from ringlab.store import Commit, SharedState, StaleLease, VmNotFound, WrongState

PAGE = bytes(range(256)) * 16


def create(state: SharedState, name: str = "vm", *, status: str = "created", **definition: Any) -> str:
    created, vm = state.create_vm(
        name,
        {"name": name, "memory_size": 4 << 20, **definition},
        b"image bytes",
        {"eip": 0x1000},
        {"retired": 0},
        Entry(status=status).to_dict(),
        {1: PAGE},
    )
    assert created
    return vm


def grant(state: SharedState, vm: str, pcpu: str = "pcpu-a") -> int:
    """Grant ``vm`` a pCPU as a driver would (decide on a snapshot, apply it); returns the token."""
    version, _entries = state.sched_snapshot()
    result = state.grant(
        version=version, pcpu=pcpu, now=1000.0, lease_seconds=10.0, chosen=vm, updates={}, events=[]
    )
    assert result.applied and result.token > 0
    return result.token


def commit(vm: str, token: int, base: int, **fields: Any) -> Commit:
    return Commit(vm, token, base, {"eip": 0x2000}, {"retired": 10}, {"exits": 1}, **fields)


def test_create_vm_is_idempotent_by_name_and_changes_nothing(state: SharedState) -> None:
    vm = create(state, "same", weight=256)
    again = state.create_vm("same", {"name": "same", "weight": 512}, b"other", {}, {}, {}, {})
    assert again == (False, vm)
    definition, record = state.vm_record(vm)
    assert definition["weight"] == 256 and record["status"] == "created"
    assert state.vm_image(vm) == b"image bytes"
    assert state.vm_ids() == [vm]
    assert state.resolve("same") == vm and state.resolve(vm) == vm


def test_created_vm_has_commit_zero_with_its_booted_pages(state: SharedState) -> None:
    vm = create(state)
    context = state.load_vcpu(vm)
    assert context.generation == 0
    assert context.state == {"eip": 0x1000}
    assert context.pages == {1: PAGE}
    assert context.memory_size == 4 << 20


def test_a_commit_with_the_current_grant_applies_and_a_retry_is_not_applied_twice(
    state: SharedState,
) -> None:
    vm = create(state, status="runnable")
    token = grant(state, vm)
    c = commit(vm, token, 0, console=b"hi", pages={2: PAGE})
    assert state.commit(c) == 1
    assert state.commit(c) == 1  # the client retried: the same generation, nothing added
    assert state.console_all(vm) == b"hi"
    context = state.load_vcpu(vm)
    assert context.generation == 1 and context.state == {"eip": 0x2000} and set(context.pages) == {1, 2}


def test_a_commit_with_a_stale_lease_token_is_refused_and_writes_nothing(state: SharedState) -> None:
    vm = create(state, status="runnable")
    token = grant(state, vm)
    with pytest.raises(StaleLease, match="stale lease"):
        state.commit(commit(vm, token + 1, 0, console=b"lost"))
    assert state.generation(vm) == 0
    assert state.console_all(vm) == b""


def test_pausing_revokes_the_grant_so_the_holders_commit_is_refused(state: SharedState) -> None:
    vm = create(state, status="runnable")
    token = grant(state, vm)
    assert state.control(vm, "pause") == "paused"
    assert state.sched_entry(vm)["token"] == 0
    with pytest.raises(StaleLease):
        state.commit(commit(vm, token, 0))
    assert state.generation(vm) == 0


def test_a_commit_from_a_stale_generation_is_refused(state: SharedState) -> None:
    vm = create(state, status="runnable")
    token = grant(state, vm)
    assert state.commit(commit(vm, token, 0)) == 1
    regranted = grant(state, vm)  # the next holder, from a copy loaded before that commit
    with pytest.raises(StaleLease, match="stale generation"):
        state.commit(commit(vm, regranted, 0, console=b"again"))
    assert state.console_all(vm) == b""
    assert state.generation(vm) == 1


def test_a_final_commit_ends_the_vm_and_adds_its_end_event(state: SharedState) -> None:
    vm = create(state, status="runnable")
    token = grant(state, vm)
    state.commit(commit(vm, token, 0, status="poweroff", code=3, detail="bye"))
    _definition, record = state.vm_record(vm)
    assert record == {"status": "poweroff", "code": "3", "detail": "bye"}
    entry = state.sched_entry(vm)
    assert entry["status"] == "poweroff" and entry["token"] == 0
    ended = [e for e in state.events_read("0-0") if e["kind"] == "ended"]
    assert [(e["vm"], e["detail"]) for e in ended] == [(vm, "poweroff 3 bye")]


def test_a_grant_decided_on_a_stale_snapshot_is_not_applied(state: SharedState) -> None:
    vm = create(state, status="runnable")
    version, _entries = state.sched_snapshot()
    state.control(vm, "pause")  # the entries change after the snapshot was read
    result = state.grant(
        version=version, pcpu="pcpu-a", now=1000.0, lease_seconds=10.0, chosen=vm, updates={}, events=[]
    )
    assert not result.applied and result.token == 0
    assert result.version > version
    assert result.entries[vm]["status"] == "paused"  # the fresh snapshot, to decide again on
    assert state.sched_entry(vm)["status"] == "paused"


def test_grants_hand_out_increasing_fencing_tokens(state: SharedState) -> None:
    first, second = create(state, "a", status="runnable"), create(state, "b", status="runnable")
    t1, t2 = grant(state, first), grant(state, second, "pcpu-b")
    assert t2 > t1
    entry = state.sched_entry(second)
    assert entry["status"] == "running" and entry["pcpu"] == "pcpu-b" and entry["token"] == t2
    assert entry["lease_until"] == 1010.0


def test_lifecycle_actions_that_do_not_apply_are_refused(state: SharedState) -> None:
    vm = create(state)
    with pytest.raises(WrongState, match="only a started VM can be paused"):
        state.control(vm, "pause")
    with pytest.raises(WrongState, match="only a paused VM can be resumed"):
        state.control(vm, "resume")
    assert state.control(vm, "start") == "runnable"
    assert state.control(vm, "start") == "runnable"  # already so: done
    with pytest.raises(VmNotFound):
        state.control("999", "start")


def test_reboot_only_boots_an_ended_vm_afresh(state: SharedState) -> None:
    vm = create(state, status="runnable")
    fresh = Entry(status="runnable").to_dict()
    assert state.reboot_vm(vm, {"eip": 0x1000}, {"retired": 0}, fresh, {1: PAGE}) == (False, "runnable")
    token = grant(state, vm)
    state.commit(commit(vm, token, 0, console=b"out", status="halted"))
    done, boot = state.reboot_vm(vm, {"eip": 0x1000}, {"retired": 0}, fresh, {1: PAGE})
    assert done and int(boot) == 1
    assert state.sched_entry(vm)["boot"] == 1
    assert state.generation(vm) == 2  # moves on, never back
    assert state.console_all(vm) == b""
    assert state.vm_record(vm)[1]["status"] == "created"


def test_destroy_frees_the_name(state: SharedState) -> None:
    vm = create(state, "gone")
    assert state.destroy_vm(vm)
    assert state.vm_by_name("gone") is None
    with pytest.raises(VmNotFound):
        state.resolve("gone")
    assert create(state, "gone") != vm
