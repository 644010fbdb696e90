"""The commit log (``rl:commits``, appended by lua/commit.lua) and the fencing switch
``RINGLAB_UNSAFE_NO_FENCING``: what ``ringlab chaos check`` reads to see tokens and generations."""

from __future__ import annotations

import pytest

from ringlab.sched import Entry
from ringlab.store import Commit, SharedState, StaleLease
from ringlab.store.state import UNSAFE_NO_FENCING

PAGE = bytes(range(256)) * 16


def create(state: SharedState) -> str:
    created, vm = state.create_vm(
        "vm",
        {"name": "vm", "memory_size": 4 << 20},
        b"image",
        {"eip": 0x1000},
        {"retired": 0},
        Entry(status="runnable").to_dict(),
        {1: PAGE},
    )
    assert created
    return vm


def grant(state: SharedState, vm: str, pcpu: str) -> int:
    version, _ = state.sched_snapshot()
    result = state.grant(
        version=version, pcpu=pcpu, now=1000.0, lease_seconds=10.0, chosen=vm, updates={}, events=[]
    )
    assert result.applied
    return result.token


def commit(vm: str, token: int, base: int, retired: int) -> Commit:
    return Commit(vm, token, base, {"eip": 0x2000}, {"retired": retired}, {})


def test_every_applied_and_refused_commit_is_logged_with_the_grant_current_then(state: SharedState) -> None:
    vm = create(state)
    first = grant(state, vm, "pcpu-a")
    assert state.commit(commit(vm, first, 0, 100)) == 1
    state.commit(commit(vm, first, 0, 100))  # a client retry: recognised, not logged again
    second = grant(state, vm, "pcpu-b")
    with pytest.raises(StaleLease):
        state.commit(commit(vm, first, 1, 200))  # the old holder: fenced off
    assert state.commit(commit(vm, second, 1, 200)) == 2
    log = state.commits_read()
    assert [(e["token"], e["current"], e["outcome"], e["generation"], e["retired"]) for e in log] == [
        (str(first), str(first), "applied", "1", "100"),
        (str(first), str(second), "refused", "1", "200"),
        (str(second), str(second), "applied", "2", "200"),
    ]
    assert log[1]["why"].startswith("stale lease") and log[1]["fenced"] == "1"
    assert log[2]["pcpu"] == "pcpu-b" and log[0]["base"] == "0"
    assert state.commits_read(after=log[1]["cursor"]) == log[2:]


def test_without_fencing_a_stale_holders_commit_lands_and_the_log_shows_it(
    state: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = create(state)
    first = grant(state, vm, "pcpu-a")
    second = grant(state, vm, "pcpu-b")  # the VM moved: the first holder is stale
    monkeypatch.setenv(UNSAFE_NO_FENCING, "1")
    assert state.commit(commit(vm, first, 0, 100)) == 1  # lands: nothing checks the token
    [entry] = state.commits_read()
    assert (entry["token"], entry["current"], entry["outcome"], entry["fenced"]) == (
        str(first),
        str(second),
        "applied",
        "0",
    )
    # The generation check still holds: the next holder, from commit 0, is refused.
    with pytest.raises(StaleLease, match="stale generation"):
        state.commit(commit(vm, second, 0, 100))
