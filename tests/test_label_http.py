"""The labelling app over real sockets: assignment, resume, concurrency, crashes, security."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from subprocess import PIPE

import httpx
import numpy as np
import pytest

from d3po import cli, preferences
from d3po.labelling.app import STATIC, UNCONFIRMED, create_app
from d3po.labelling.assign import prompts_left
from d3po.labelling.benchmark import judge_all, write_world_set
from d3po.labelling.guard import MAX_BODY_BYTES
from d3po.labelling.server import app_process, running
from d3po.preferences import decide_pairs, live_judgements, preference_pairs, read_judgements
from d3po.sample_sets import read_manifest


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """6 prompts x 3 toy-world images."""
    samples = tmp_path_factory.mktemp("small") / "samples"
    write_world_set(samples, prompts=6, images_per_prompt=3, seed=1)
    return samples


@pytest.fixture(scope="module")
def large_set(tmp_path_factory) -> Path:
    """250 prompts x 2 images: enough for 250 decisions per annotator."""
    samples = tmp_path_factory.mktemp("large") / "samples"
    write_world_set(samples, prompts=250, images_per_prompt=2, seed=2)
    return samples


def next_view(client: httpx.Client, annotator: str) -> dict:
    response = client.get("/api/next", params={"annotator": annotator})
    response.raise_for_status()
    return response.json()


def choose_first(client: httpx.Client, view: dict) -> dict:
    task = view["task"]
    body = {"annotator": view["annotator"], "task": task["key"], "best": task["images"][0]["id"]}
    response = client.post("/api/decide", json=body)
    response.raise_for_status()
    return response.json()


def test_each_prompt_goes_to_n_different_annotators_balanced(small_set, tmp_path):
    app = create_app(small_set, tmp_path / "labels.jsonl", "best", annotators_per_prompt=2)
    seen: dict[str, list[str]] = {name: [] for name in ("ana", "ben", "cy")}
    with running(app) as url, httpx.Client(base_url=url) as client:
        views = {name: next_view(client, name) for name in seen}
        while any(view["task"] for view in views.values()):
            for name, view in views.items():  # round robin, as people at the same pace
                if view["task"]:
                    seen[name].append(view["task"]["key"])
                    views[name] = choose_first(client, view)
        progress = next_view(client, "ana")["progress"]
        assert progress["set_done"] == progress["set_total"] == 12
    assert sorted(map(len, seen.values())) == [4, 4, 4]  # 6 prompts x 2 people over 3 people
    for tasks in seen.values():
        assert len(set(tasks)) == len(tasks)  # nobody sees a prompt twice
    table = read_judgements(tmp_path / "labels.jsonl", manifest=read_manifest(small_set))
    assert prompts_left(small_set, tmp_path / "labels.jsonl", 2) == 0
    assert prompts_left(small_set, tmp_path / "labels.jsonl", 3) == 6
    assert prompts_left(small_set, tmp_path / "missing.jsonl", 1) == 6
    per_prompt = table.groupby("prompt")["annotator"].nunique()
    assert (per_prompt == 2).all() and len(per_prompt) == 6


def test_undo_and_resume_after_a_restart(small_set, tmp_path):
    record = tmp_path / "labels.jsonl"
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        view = choose_first(c, choose_first(c, next_view(c, "ana")))
        shown = view["task"]["key"]
    # a new app on the same record: ana finds her progress, her task and her undo again
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        view = next_view(c, "ana")
        assert view["progress"]["mine_done"] == 2 and view["task"]["key"] == shown
        undone = c.post("/api/undo", json={"annotator": "ana"}).json()
        assert undone["task"]["key"] == "g0001" and undone["progress"]["mine_done"] == 1
        assert next_view(c, "ana")["task"]["key"] == "g0001"  # a reload shows it again
        skipped = c.post("/api/skip", json={"annotator": "ana", "task": "g0001"}).json()
        assert skipped["task"]["key"] == shown
    table = read_judgements(record)
    assert list(table["kind"]) == ["best", "best", "undo", "skip"]
    assert list(live_judgements(table)["kind"]) == ["best", "skip"]


def test_a_record_that_cannot_be_written_is_a_503_in_words(small_set, tmp_path, monkeypatch):
    def io_error(fd):
        raise OSError(errno.EIO, "Input/output error")

    record = tmp_path / "labels.jsonl"
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        view = choose_first(c, next_view(c, "ana"))
        monkeypatch.setattr(preferences.os, "fsync", io_error)
        body = {"annotator": "ana", "task": view["task"]["key"]}
        response = c.post("/api/decide", json=body | {"best": view["task"]["images"][0]["id"]})
        assert response.status_code == 503
        assert response.json()["detail"] == f"{UNCONFIRMED}: [Errno 5] Input/output error"
        monkeypatch.undo()
        task = next_view(c, "ana")["task"]
        response = c.post("/api/skip", json={"annotator": "ana", "task": task["key"]})
        assert response.status_code == 503 and "restart the labelling app" in response.text
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        choose_first(c, next_view(c, "ana"))  # a restarted app goes on from the file
    assert list(read_judgements(record)["kind"])[0] == "best"


def test_the_score_and_pairwise_protocols_write_their_lines(small_set, tmp_path):
    for protocol, answer in (("score", None), ("pairwise", {"winner": "tie"})):
        record = tmp_path / f"{protocol}.jsonl"
        app = create_app(small_set, record, protocol, scale="1-5")
        with running(app) as url, httpx.Client(base_url=url) as client:
            task = next_view(client, "ana")["task"]
            ids = [image["id"] for image in task["images"]]
            if protocol == "score":  # values off the scale, booleans, a missing image: refused
                for values in ([5, 1, 7], [5, 1, True], [5, 1]):
                    bad = {"scores": dict(zip(ids, values, strict=False))}
                    body = {"annotator": "ana", "task": task["key"], **bad}
                    assert client.post("/api/decide", json=body).status_code == 422, values
            answer = answer or {"scores": dict(zip(ids, [5, 1, 3], strict=True))}
            body = {"annotator": "ana", "task": task["key"], **answer}
            assert client.post("/api/decide", json=body).status_code == 200
        (line,) = read_judgements(record, manifest=read_manifest(small_set)).itertuples()
        if protocol == "score":
            assert line.kind == "score" and line.scores == {ids[0]: 5, ids[1]: 1, ids[2]: 3}
        else:
            assert len(ids) == 2 and (line.kind, line.a, line.b, line.winner) == (
                "pair",
                *ids,
                "tie",
            )


def test_the_toy_annotator_judges_over_http_like_the_judge(tmp_path):
    from d3po.cli import main
    from d3po.judges import toy_safe
    from d3po.sample_sets import read_set_images

    samples = tmp_path / "samples"
    write_world_set(samples, prompts=8, images_per_prompt=3, seed=3, unsafe_rate=0.5)
    record = tmp_path / "labels.jsonl"
    main(["annotate", "--samples", str(samples), "--criterion", "safe", "--out", str(record),
          "--via-http", "--protocol", "score"])  # fmt: skip
    manifest = read_manifest(samples)
    table = read_judgements(record, manifest=manifest)
    assert len(table) == 8 and set(table["kind"]) == {"score"}
    safe = toy_safe(read_set_images(samples, manifest), list(manifest["prompt"]))
    expected = preference_pairs(manifest["group"].to_numpy(), safe)
    decided = decide_pairs(table, list(manifest["id"]))
    assert sorted(map(tuple, decided.pairs.tolist())) == sorted(map(tuple, expected.tolist()))
    assert len(expected) > 0


@pytest.mark.slow
def test_eight_annotators_at_once_lose_and_duplicate_nothing(large_set, tmp_path):
    record = tmp_path / "labels.jsonl"
    saved: dict[str, list[str]] = {}
    with app_process(large_set, record, "--annotators-per-prompt", "8") as (url, _):

        def annotator(name: str) -> None:
            saved[name] = judge_all(url, name, "best", 250)

        threads = [threading.Thread(target=annotator, args=(f"a{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(map(len, saved.values())) == [250] * 8
    table = read_judgements(record, manifest=read_manifest(large_set))
    assert len(table) == 2000 and table["decision"].is_unique
    assert set(table["decision"]) == {d for decisions in saved.values() for d in decisions}
    table = table.assign(task=[images[0] for images in table["images"]])
    assert not table.duplicated(["annotator", "task"]).any()  # nobody judged a prompt twice
    per_task = table.groupby("task")
    assert (per_task["annotator"].nunique() == 8).all() and per_task.ngroups == 250


@pytest.mark.slow
def test_a_restart_after_a_line_cut_off_by_a_crash_resumes(small_set, tmp_path):
    record = tmp_path / "labels.jsonl"
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        choose_first(c, next_view(c, "ana"))
    with record.open("ab") as handle:
        handle.write(b'{"kind": "best", "pro')  # a crash in mid-write
    with running(create_app(small_set, record, "best")) as url, httpx.Client(base_url=url) as c:
        assert choose_first(c, next_view(c, "ana"))["progress"]["mine_done"] == 2
    assert list(read_judgements(record)["kind"]) == ["best", "best"]


def test_a_killed_app_keeps_every_confirmed_decision(large_set, tmp_path):
    record = tmp_path / "labels.jsonl"
    confirmed: list[str] = []
    with app_process(large_set, record, "--annotators-per-prompt", "4") as (url, process):

        def annotator(name: str) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                try:
                    view = next_view(client, name)
                    while view["task"]:
                        view = choose_first(client, view)
                        confirmed.append(view["saved"])
                except httpx.TransportError:
                    return  # the app is gone

        threads = [threading.Thread(target=annotator, args=(f"a{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        while len(confirmed) < 150:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        for thread in threads:
            thread.join()
    table = read_judgements(record, manifest=read_manifest(large_set))  # still parses
    assert set(confirmed) <= set(table["decision"])
    assert len(table) < 1000  # the app really died before the end
    # and a new app takes the record up again where it was left
    app = create_app(large_set, record, "best", annotators_per_prompt=4)
    with running(app) as url, httpx.Client(base_url=url) as client:
        done = next_view(client, "a0")["progress"]["set_done"]
    assert done == len(live_judgements(table))


# --------------------------------------------------------------------------------- security

TRAVERSALS = ["../manifest.csv", "..%2Fmanifest.csv", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "/etc/passwd", "..\\..\\manifest.csv", "0000_00/../../labels.jsonl"]  # fmt: skip


@pytest.fixture
def guarded(small_set, tmp_path):
    """The app bound beyond loopback (token required), and a check that nothing was written."""
    record = tmp_path / "labels.jsonl"
    app = create_app(small_set, record, "best", token="secret-token", host="0.0.0.0")
    before = sorted(p.name for p in small_set.iterdir()), sorted(tmp_path.iterdir())
    token = {"Authorization": "Bearer secret-token"}
    with running(app, host="0.0.0.0") as url, httpx.Client(base_url=url, headers=token) as client:
        yield client
        # the probes wrote nothing: the record is empty, no file appeared anywhere
        assert record.stat().st_size == 0
        assert sorted(p.name for p in small_set.iterdir()) == before[0]
        assert sorted(tmp_path.iterdir()) == before[1]


def test_no_token_no_access_beyond_loopback(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "d3po_token=wrong"}):
        with httpx.Client(base_url=str(guarded.base_url), headers=headers) as anonymous:
            assert anonymous.get("/").status_code == 401
            assert anonymous.get("/images/0000_00").status_code == 401
            body = {"annotator": "eve", "task": "g0000", "best": "0000_00"}
            assert anonymous.post("/api/decide", json=body).status_code == 401
    with httpx.Client(base_url=str(guarded.base_url)) as browser:
        assert browser.get("/", params={"token": "secret-token"}).status_code == 200
        assert browser.get("/api/config").status_code == 200  # the cookie set by ?token=
    with pytest.raises(ValueError, match="requires an access token"):
        create_app(Path("unused"), Path("unused.jsonl"), host="0.0.0.0")


def test_path_traversal_reaches_no_file(guarded):
    for probe in TRAVERSALS:
        for path in (f"/images/{probe}", f"/static/{probe}", f"/{probe}"):
            response = guarded.get(path)
            assert response.status_code in (404, 400), (path, response.status_code)
            assert b"a red" not in response.content and b"root:" not in response.content
        assert guarded.get("/api/next", params={"annotator": probe}).status_code == 422
        for field in ("annotator", "task", "best"):
            body = {"annotator": "ana", "task": "g0000", "best": "0000_00", field: probe}
            assert guarded.post("/api/decide", json=body).status_code == 422, (field, probe)
        assert (
            guarded.post("/api/skip", json={"annotator": "ana", "task": probe}).status_code == 422
        )
        assert guarded.post("/api/undo", json={"annotator": probe}).status_code == 422


def test_unknown_ids_bad_winners_and_oversized_bodies_are_refused(guarded):
    view = guarded.get("/api/next", params={"annotator": "ana"}).json()
    task = view["task"]["key"]
    cases = [
        ({"annotator": "ana", "task": task, "best": "9999_99"}, 422),  # not among the images
        ({"annotator": "ana", "task": "g9999", "best": "0000_00"}, 404),  # no such task
        ({"annotator": "ana", "task": "g0001", "best": "0001_00"}, 409),  # not ana's task
        ({"annotator": "ana", "task": task, "winner": "left"}, 422),  # not a winner
        ({"annotator": "ana", "task": task}, 422),  # no answer
        ({"annotator": "ana", "task": task, "best": "0000_00", "path": "/etc"}, 422),  # unknown
        ({"annotator": "x" * 65, "task": task, "best": "0000_00"}, 422),  # name too long
        ({"annotator": "ana", "task": task, "best": "0000_00" * 1000}, 422),  # id too long
    ]
    for body, status in cases:
        assert guarded.post("/api/decide", json=body).status_code == status, body
    big = {"annotator": "ana", "task": task, "best": "0000_00", "pad": "x" * MAX_BODY_BYTES}
    assert guarded.post("/api/decide", json=big).status_code == 413
    assert guarded.get("/images/nope").status_code == 404
    assert guarded.post("/api/undo", json={"annotator": "ana"}).status_code == 409


def test_a_loopback_bind_refuses_other_host_names(small_set, tmp_path):
    app = create_app(small_set, tmp_path / "labels.jsonl", "best")
    with running(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/api/config").status_code == 200
        assert client.get("/api/config", headers={"Host": "evil.example"}).status_code == 400


def test_report_page_and_data(small_set, tmp_path):
    app = create_app(small_set, tmp_path / "labels.jsonl", "best", annotators_per_prompt=2)
    with running(app) as url, httpx.Client(base_url=url) as client:
        for name in ("ana", "ben"):
            choose_first(client, next_view(client, name))
        assert client.get("/report").status_code == 200
        report = client.get("/api/report").json()
    assert [row["decisions"] for row in report["annotators"]] == [1, 1]
    assert report["training"]["pairs"] == 4  # two prompts, best of 3 over 2 others each
    assert np.isfinite(report["annotators"][0]["median_seconds_per_prompt"])


@pytest.mark.parametrize("host, shown", [("127.0.0.1", "localhost"), ("0.0.0.0", "machine")])
def test_d3po_label_prints_urls_that_open_the_app_and_its_report(small_set, tmp_path, host, shown):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "d3po", "label", str(small_set), "--port", str(port),
               "--judgements", str(tmp_path / "labels.jsonl"), "--host", host]  # fmt: skip
    process = subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]  # d3po label: ..., open, report
        printed = dict(line.split() for line in lines[1:])
        shown = socket.gethostname() if shown == "machine" else shown  # not 0.0.0.0
        here = {name: url.replace(shown, "127.0.0.1", 1) for name, url in printed.items()}
        pages = {name: httpx.get(here[name], timeout=30).text for name in ("open", "report")}
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert printed["open"].startswith(f"http://{shown}:{port}/")
    assert pages["report"] == (STATIC / "report.html").read_text() != pages["open"]
    assert process.returncode == 0 and "Traceback" not in errors, errors


def test_a_port_in_use_is_one_line_before_any_url_or_file(small_set, tmp_path, capsys):
    record = tmp_path / "labels.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        with pytest.raises(SystemExit) as raised:
            cli.main(["label", str(small_set), "--judgements", str(record), "--port", port])
    output = capsys.readouterr()
    assert raised.value.code == 1 and output.out == ""
    assert output.err.startswith(f"d3po label: error: --host 127.0.0.1 --port {port}: ")
    assert "in use" in output.err and output.err.count("\n") == 1
    assert not record.exists()
