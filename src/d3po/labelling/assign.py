"""Who judges what next: each task to ``annotators_per_prompt`` different people, balanced.

The state is rebuilt from the record (``replay``), so a restarted app resumes where everyone
left off. An annotator is always handed the open task with the fewest annotators so far
(decided, or being judged right now), first in set order among equals; nobody gets a task
twice (a skipped task counts as seen, and someone else covers it). The task an annotator is
shown is held for them (a lease), so that a reload shows the same task; a lease older than
``lease_seconds`` no longer keeps the task from others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from d3po.labelling.tasks import SampleSet, Task, load_sample_set
from d3po.preferences import judged_images, live_judgements, read_judgements


@dataclass
class Lease:
    task: str
    since: float  # time.monotonic() when it was handed out


@dataclass
class Assignments:
    tasks: dict[str, Task]
    annotators_per_prompt: int
    lease_seconds: float = 600.0
    done: dict[str, set[str]] = field(default_factory=dict)  # task -> annotators who decided
    seen: dict[str, set[str]] = field(default_factory=dict)  # annotator -> tasks decided/skipped
    history: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (decision, task)
    leases: dict[str, Lease] = field(default_factory=dict)

    def replay(self, record: Path, samples: SampleSet) -> None:
        """Take in every live decision of the set's record (undone ones are not live)."""
        judgements = read_judgements(record, manifest=samples.manifest)
        for row in live_judgements(judgements).itertuples():
            images = judged_images(row)
            task = samples.group_of.get(images[0]) if images else None
            if task in self.tasks:
                self.record(row.annotator, task, row.decision, skipped=row.kind == "skip")

    def record(self, annotator: str, task: str, decision: str | None, skipped: bool) -> None:
        self.seen.setdefault(annotator, set()).add(task)
        if not skipped:
            self.done.setdefault(task, set()).add(annotator)
        if decision is not None:
            self.history.setdefault(annotator, []).append((decision, task))
        lease = self.leases.get(annotator)
        if lease is not None and lease.task == task:
            del self.leases[annotator]

    def undo(self, annotator: str) -> tuple[str, str] | None:
        """Forget the annotator's last decision: (decision id, task), or None if none is left."""
        history = self.history.get(annotator)
        if not history:
            return None
        decision, task = history.pop()
        self.seen[annotator].discard(task)
        self.done.get(task, set()).discard(annotator)
        return decision, task

    def hold(self, annotator: str, task: str, now: float) -> None:
        self.leases[annotator] = Lease(task, now)

    def _coverage(self, now: float, besides: str) -> dict[str, int]:
        """Per task: annotators who decided it or hold a fresh lease on it, ``besides`` aside."""
        holders: dict[str, set[str]] = {}
        for who, lease in self.leases.items():
            if who != besides and now - lease.since < self.lease_seconds:
                holders.setdefault(lease.task, set()).add(who)
        return {
            task: len((self.done.get(task, set()) | holders.get(task, set())) - {besides})
            for task in self.tasks
        }

    def open_tasks(self, annotator: str, now: float) -> list[str]:
        """Tasks this annotator may still get, least covered first."""
        seen = self.seen.get(annotator, set())
        coverage = self._coverage(now, annotator)
        open_ = [
            task
            for task in self.tasks
            if task not in seen and coverage[task] < self.annotators_per_prompt
        ]
        return sorted(open_, key=coverage.__getitem__)  # stable: set order among equals

    def next_task(self, annotator: str, now: float) -> Task | None:
        """The task to show: the one held for this annotator, else the least covered one."""
        lease = self.leases.get(annotator)
        if lease is not None and lease.task not in self.seen.get(annotator, set()):
            return self.tasks[lease.task]
        candidates = self.open_tasks(annotator, now)
        if not candidates:
            self.leases.pop(annotator, None)
            return None
        self.hold(annotator, candidates[0], now)
        return self.tasks[candidates[0]]

    def progress(self, annotator: str, now: float) -> dict[str, int]:
        """Counts for the two progress bars: this annotator's and the whole set's."""
        mine = sum(annotator in who for who in self.done.values())
        needed = len(self.tasks) * self.annotators_per_prompt
        covered = sum(min(len(who), self.annotators_per_prompt) for who in self.done.values())
        left = set(self.open_tasks(annotator, now))
        lease = self.leases.get(annotator)
        if lease is not None and lease.task not in self.seen.get(annotator, set()):
            left.add(lease.task)
        return {
            "mine_done": mine,
            "mine_total": mine + len(left),
            "set_done": covered,
            "set_total": needed,
        }


def prompts_left(samples_dir: Path, judgements: Path, annotators_per_prompt: int = 1) -> int:
    """Prompts of a sample set that fewer than ``annotators_per_prompt`` people decided yet
    (0: the set is fully judged; a missing record: every prompt)."""
    samples = load_sample_set(samples_dir, "best")  # every protocol has one task per prompt
    state = Assignments(samples.tasks, annotators_per_prompt)
    if Path(judgements).is_file():
        state.replay(judgements, samples)
    return sum(len(state.done.get(task, ())) < annotators_per_prompt for task in samples.tasks)
