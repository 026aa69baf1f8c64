"""The labelling web app: FastAPI + uvicorn, a plain HTML/CSS/JS page, state on the server.

Every decision is appended to the judgements record (``preferences.JudgementRecord``: locked,
flushed and fsync'd) before the page is told it was saved; the app writes nothing else. The
state changes under one lock, the fsync happens outside it (shared by concurrent requests). The
assignment state is rebuilt from that record at start (``Assignments.replay``).

Security: images are served by id from the manifest only (no client path reaches the file
system); every request field is validated (pydantic models here; ids from this set, winners
from the protocol); the token, body size and Host checks are ``guard``'s.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from d3po.errors import ConfigError
from d3po.labelling.assign import Assignments
from d3po.labelling.guard import is_loopback, protect
from d3po.labelling.report import label_report
from d3po.labelling.tasks import SampleSet, Task, load_sample_set
from d3po.preferences import JudgementRecord, read_judgements, timestamp

#: Values of one image under the score protocol, per scale.
SCALES: dict[str, tuple[int, ...]] = {"good-bad": (0, 1), "1-5": (1, 2, 3, 4, 5)}
STATIC = Path(str(resources.files("d3po.labelling") / "static"))  # the page's HTML, CSS, JS

AnnotatorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}$")]
TaskKey = Annotated[str, StringConstraints(pattern=r"^g[0-9]{4,8}$")]
ImageId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Who(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: AnnotatorName


class Skip(Who):
    task: TaskKey


class Decision(Skip):
    best: ImageId | None = None  # protocol best
    winner: Literal["a", "b", "tie"] | None = None  # protocol pairwise
    scores: dict[ImageId, StrictInt] | None = Field(default=None, max_length=64)  # protocol score


class Labeller:
    """The app's state: the sample set, the record and who judges what; one lock for all."""

    def __init__(
        self,
        samples: SampleSet,
        record: JudgementRecord,
        protocol: str,
        annotators_per_prompt: int,
        scale: str = "good-bad",
    ) -> None:
        self.samples, self.record, self.protocol, self.scale = samples, record, protocol, scale
        self.assignments = Assignments(samples.tasks, annotators_per_prompt)
        self.assignments.replay(record.path, samples)
        self.lock = threading.Lock()

    # --- what the page is shown ------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "scale": list(SCALES[self.scale]),
            "scale_name": self.scale,
            "tasks": len(self.samples.tasks),
            "annotators_per_prompt": self.assignments.annotators_per_prompt,
        }

    def view(self, annotator: str) -> dict[str, Any]:
        with self.lock:
            return self._view(annotator)

    def _view(self, annotator: str) -> dict[str, Any]:
        now = time.monotonic()
        task = self.assignments.next_task(annotator, now)
        shown = None
        if task is not None:
            images = [{"id": image, "url": f"/images/{image}"} for image in task.images]
            shown = {"key": task.key, "prompt": task.prompt, "images": images}
        return {
            "annotator": annotator,
            "task": shown,
            "progress": self.assignments.progress(annotator, now),
            "can_undo": bool(self.assignments.history.get(annotator)),
        }

    # --- what the page sends ---------------------------------------------------------------

    def _assigned(self, annotator: str, key: str) -> Task:
        """The task ``key`` if this annotator may decide it now (409 if not)."""
        task = self.samples.tasks.get(key)
        if task is None:
            raise HTTPException(404, f"unknown task {key!r}")
        lease = self.assignments.leases.get(annotator)
        if lease is not None and lease.task == key:
            return task
        if lease is None and key in self.assignments.open_tasks(annotator, time.monotonic()):
            return task  # e.g. the page outlived a restart of the app
        raise HTTPException(409, f"task {key!r} is not the one {annotator!r} was given")

    def _answer(self, task: Task, decision: Decision) -> dict[str, Any]:
        """The protocol's fields of the record line (422 when they do not fit the task)."""
        if self.protocol == "best":
            if decision.best not in task.images:
                raise HTTPException(422, f"'best' must be one of {list(task.images)}")
            return {"kind": "best", "images": list(task.images), "best": decision.best}
        if self.protocol == "pairwise":
            if decision.winner is None:
                raise HTTPException(422, "'winner' must be a, b or tie")
            a, b = task.images
            return {"kind": "pair", "a": a, "b": b, "winner": decision.winner}
        scores = decision.scores or {}
        allowed = SCALES[self.scale]
        if set(scores) != set(task.images) or any(v not in allowed for v in scores.values()):
            raise HTTPException(422, f"'scores' must rate each of {list(task.images)} in {allowed}")
        return {"kind": "score", "scores": {image: scores[image] for image in task.images}}

    def _append(self, annotator: str, task: Task, fields: dict[str, Any]) -> tuple[str, int]:
        """Write the decision's line and take it into the state: (decision id, record ticket)."""
        decision = uuid.uuid4().hex[:16]
        line = {**fields, "prompt": task.prompt, "annotator": annotator}
        line.update(time=timestamp("milliseconds"), decision=decision, protocol=self.protocol)
        lease = self.assignments.leases.get(annotator)
        if lease is not None and lease.task == task.key:
            line["seconds"] = round(time.monotonic() - lease.since, 3)
        ticket = self.record.write(line)
        self.assignments.record(annotator, task.key, decision, skipped=fields["kind"] == "skip")
        return decision, ticket

    def _saved(self, annotator: str, key: str, fields_of) -> dict[str, Any]:
        """Append the decision on ``key``; reply only once its line is on disk."""
        with _record_trouble_is_503("not saved"), self.lock:
            task = self._assigned(annotator, key)
            decision, ticket = self._append(annotator, task, fields_of(task))
            reply = {"saved": decision, **self._view(annotator)}
        with _record_trouble_is_503(UNCONFIRMED):
            self.record.wait_durable(ticket)  # outside the lock: one fsync serves many requests
        return reply

    def decide(self, decision: Decision) -> dict[str, Any]:
        return self._saved(
            decision.annotator, decision.task, lambda task: self._answer(task, decision)
        )

    def skip(self, request: Skip) -> dict[str, Any]:
        return self._saved(
            request.annotator,
            request.task,
            lambda task: {"kind": "skip", "images": list(task.images)},
        )

    def undo(self, annotator: str) -> dict[str, Any]:
        with _record_trouble_is_503("not saved"), self.lock:
            history = self.assignments.history.get(annotator)
            if not history:
                raise HTTPException(409, f"{annotator!r} has no decision to undo")
            decision, task = history[-1]
            line = {"kind": "undo", "undoes": decision, "annotator": annotator}
            line.update(time=timestamp("milliseconds"), protocol=self.protocol)
            ticket = self.record.write(line)
            self.assignments.undo(annotator)
            self.assignments.hold(annotator, task, time.monotonic())
            reply = {"undone": decision, **self._view(annotator)}
        with _record_trouble_is_503(UNCONFIRMED):
            self.record.wait_durable(ticket)
        return reply


UNCONFIRMED = "not confirmed, it may or may not be in the file (restart the app to know)"


@contextmanager
def _record_trouble_is_503(outcome: str) -> Iterator[None]:
    """A record that cannot be written (disk full, I/O error) is the server's trouble, said to
    the page in words (JudgementRecord refuses every write after one whose outcome is unknown)."""
    try:
        yield
    except OSError as error:
        raise HTTPException(503, f"{outcome}: {error}") from None


def create_app(
    samples_dir: Path,
    judgements: Path,
    protocol: str = "best",
    annotators_per_prompt: int = 1,
    token: str | None = None,
    host: str = "127.0.0.1",
    scale: str = "good-bad",
) -> FastAPI:
    """The app for one sample set and one record (opened, and locked, until shutdown)."""
    if annotators_per_prompt < 1:
        raise ConfigError(
            f"--annotators-per-prompt must be at least 1, got {annotators_per_prompt}"
        )
    if scale not in SCALES:
        raise ConfigError(f"unknown score scale {scale!r}; choose one of {', '.join(SCALES)}")
    if token is None and not is_loopback(host):
        raise ConfigError(f"binding {host} (not loopback) requires an access token")
    samples = load_sample_set(samples_dir, protocol)
    record = JudgementRecord(judgements)
    try:
        labeller = Labeller(samples, record, protocol, annotators_per_prompt, scale)
    except BaseException:
        record.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        record.close()

    app = FastAPI(title="d3po label", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.labeller = labeller
    protect(app, token, host)
    _add_routes(app, labeller)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_routes(app: FastAPI, labeller: Labeller) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/report", include_in_schema=False)
    def report_page() -> FileResponse:
        return FileResponse(STATIC / "report.html")

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        return labeller.config()

    @app.get("/api/next")
    def next_task(annotator: AnnotatorName) -> dict[str, Any]:
        return labeller.view(annotator)

    @app.post("/api/decide")
    def decide(decision: Decision) -> dict[str, Any]:
        return labeller.decide(decision)

    @app.post("/api/skip")
    def skip(request: Skip) -> dict[str, Any]:
        return labeller.skip(request)

    @app.post("/api/undo")
    def undo(request: Who) -> dict[str, Any]:
        return labeller.undo(request.annotator)

    @app.get("/api/report")
    def report() -> dict[str, Any]:
        with labeller.lock:
            table = read_judgements(labeller.record.path, manifest=labeller.samples.manifest)
        return label_report(labeller.samples.manifest, table)

    @app.get("/images/{image_id}")
    def image(image_id: str) -> FileResponse:
        path = labeller.samples.files.get(image_id)  # ids from the manifest only
        if path is None:
            raise HTTPException(404, "unknown image id")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})
