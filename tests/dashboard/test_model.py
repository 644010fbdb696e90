"""The dashboard's plain data: exit counts parsed from the event stream, the timeline of slices,
exit rates between two snapshots."""

from __future__ import annotations

from ringlab.dashboard import parse_dashboard
from ringlab.dashboard.model import Timeline, parse_exit_counts, with_rates


def test_exit_counts_read_as_the_pcpu_driver_writes_them() -> None:
    assert parse_exit_counts("io x3, hlt x1") == {"io": 3, "hlt": 1}
    assert parse_exit_counts("EXCEPTION_NMI x12") == {"EXCEPTION_NMI": 12}
    assert parse_exit_counts("") == {}
    assert parse_exit_counts("garbage, io x2") == {"io": 2}


def test_a_slice_is_its_scheduled_exit_and_descheduled_events() -> None:
    t = Timeline(window=60)
    assert t.feed({"kind": "scheduled", "vm": "1", "pcpu": "pcpu0", "detail": "credit 0.3", "time": 100.0})
    assert t.running == {"pcpu0": {"vm": "1", "start": 100.0}}
    assert not t.feed({"kind": "exit", "vm": "1", "pcpu": "pcpu0", "detail": "io x3, hlt x1", "time": 100.2})
    assert t.feed(
        {
            "kind": "descheduled",
            "vm": "1",
            "pcpu": "pcpu0",
            "detail": "preempted 100.0 100.2 0.2",
            "time": 100.2,
        }
    )
    assert t.running == {}
    [s] = t.since(0)
    assert s == {
        "seq": 1, "vm": "1", "pcpu": "pcpu0", "start": 100.0, "end": 100.2, "how": "preempted",
        "exits": {"io": 3, "hlt": 1},
    }  # fmt: skip
    assert t.since(t.last_seq) == []
    # a slice with no exit event has none; a malformed detail is left out
    t.feed({"kind": "descheduled", "vm": "2", "pcpu": "pcpu0", "detail": "idle 100.2 100.3 0.1", "time": 1})
    assert t.since(1)[0]["exits"] == {}
    assert not t.feed({"kind": "descheduled", "vm": "2", "pcpu": "pcpu0", "detail": "what?", "time": 1})


def test_the_timeline_keeps_only_its_window() -> None:
    t = Timeline(window=10, limit=100)
    for n in range(30):
        t.feed({"kind": "descheduled", "vm": "1", "pcpu": "p", "detail": f"preempted {n} {n + 1} 1"})
    kept = t.since(0)
    assert kept[0]["start"] == 19 and kept[-1]["end"] == 30  # ends at 20 .. 30


def test_exit_rates_between_two_snapshots() -> None:
    before = [{"id": "1", "exits": 10, "exits_by_reason": {"io": 10}}]
    now = [
        {"id": "1", "exits": 40, "exits_by_reason": {"io": 30, "hlt": 10}},
        {"id": "2", "exits": 5, "exits_by_reason": {"io": 5}},
    ]
    with_rates(now, before, 2.0)
    assert now[0]["exits_per_s"] == 15 and now[0]["rates_by_reason"] == {"io": 10, "hlt": 5}
    assert now[1]["exits_per_s"] == 0 and now[1]["rates_by_reason"] == {}
    rebooted = [{"id": "1", "exits": 4, "exits_by_reason": {"io": 4}}]
    with_rates(rebooted, before, 1.0)
    assert rebooted[0]["exits_per_s"] == 4


def test_the_dashboard_setting() -> None:
    assert parse_dashboard("127.0.0.1:50080") == ("127.0.0.1", 50080)
    assert parse_dashboard("8080") == ("127.0.0.1", 8080)
    assert parse_dashboard("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_dashboard("[::1]:9000") == ("::1", 9000)
    assert parse_dashboard("off") is None and parse_dashboard("OFF") is None
    for bad in ("host:", "host:port", "1:70000", ":80"):
        try:
            parse_dashboard(bad)
        except ValueError as exc:
            assert "expected" in str(exc) or "out of range" in str(exc)
        else:
            raise AssertionError(bad)
