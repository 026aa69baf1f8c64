"""Who judges what next: coverage, leases, undo (the app's assignment state, on its own)."""

from __future__ import annotations

from d3po.labelling.assign import Assignments
from d3po.labelling.tasks import Task

TASKS = {f"g000{i}": Task(f"g000{i}", i, "a red circle", (f"{i}_0", f"{i}_1")) for i in range(3)}


def test_the_least_covered_task_first_and_a_held_task_stays_held():
    state = Assignments(TASKS, annotators_per_prompt=2, lease_seconds=60)
    assert state.next_task("ana", now=0).key == "g0000"
    assert state.next_task("ben", now=1).key == "g0001"  # g0000 is held by ana
    assert state.next_task("cy", now=2).key == "g0002"
    assert state.next_task("ana", now=3).key == "g0000"  # a reload: the same task
    state.record("ana", "g0000", "d1", skipped=False)
    assert state.next_task("ana", now=4).key == "g0001"  # covered once, like g0002


def test_a_stale_lease_frees_the_task_for_others():
    state = Assignments(TASKS, annotators_per_prompt=1, lease_seconds=60)
    for who in ("ana", "ben", "cy"):
        state.next_task(who, now=0)
    assert state.next_task("dee", now=30) is None  # every task is held
    assert state.next_task("dee", now=61).key == "g0000"  # ana's lease went stale


def test_undo_reopens_the_task_and_skips_count_as_seen():
    state = Assignments(TASKS, annotators_per_prompt=1)
    state.next_task("ana", now=0)
    state.record("ana", "g0000", "d1", skipped=True)
    state.next_task("ana", now=1)
    state.record("ana", "g0001", "d2", skipped=False)
    assert state.progress("ana", now=2) == {
        "mine_done": 1, "mine_total": 2, "set_done": 1, "set_total": 3,
    }  # fmt: skip
    assert state.next_task("ben", now=3).key == "g0000"  # ana skipped it: still open
    assert state.undo("ana") == ("d2", "g0001")
    assert state.undo("ana") == ("d1", "g0000")
    assert state.undo("ana") is None
    assert "g0000" not in state.seen["ana"] and not state.done.get("g0001")
