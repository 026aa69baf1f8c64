"""The labelling page in a real browser: Debian's chromium, headless, driven by Playwright.

Needs ``apt-get install chromium`` and ``pip install playwright`` (.ci/run installs both; no
``playwright install``: the system browser is used; D3PO_CHROMIUM names another binary).
Without them the test is skipped, except in CI (CI=true), where it fails. Select with
``pytest -m browser``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from d3po.labelling.app import create_app
from d3po.labelling.benchmark import write_world_set
from d3po.labelling.server import running
from d3po.preferences import live_judgements, read_judgements

pytestmark = pytest.mark.browser
CHROMIUM = Path(os.environ.get("D3PO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture
def page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "Playwright for Python is not installed (pip install playwright)"
    else:
        problem = (
            None if CHROMIUM.exists() else f"no browser at {CHROMIUM} (apt-get install chromium)"
        )
    if problem:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(problem)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_an_annotator_judges_undoes_reloads_and_continues(page, tmp_path):
    from playwright.sync_api import expect

    samples, record = tmp_path / "samples", tmp_path / "labels.jsonl"
    write_world_set(samples, prompts=6, images_per_prompt=3, seed=5)
    with running(create_app(samples, record, "best")) as url:
        page.goto(url)
        page.fill("#name", "ana")
        page.press("#name", "Enter")
        done = page.locator("#mine-text")
        expect(done).to_have_text("0 / 6")
        expect(page.locator("#login")).to_be_hidden()
        image = page.locator("#images img").first
        expect(image).to_have_js_property("width", 256)  # 16 px, scaled up 16 times...
        assert image.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"
        for count, key in enumerate("123", start=1):  # three prompts by keyboard
            page.keyboard.press(key)
            expect(done).to_have_text(f"{count} / 6")
        fourth = page.locator("#prompt").inner_text()
        page.locator("#images figure").nth(1).click()  # one by mouse
        expect(done).to_have_text("4 / 6")
        page.keyboard.press("u")  # undo the mouse decision: its prompt comes back
        expect(done).to_have_text("3 / 6")
        expect(page.locator("#prompt")).to_have_text(fourth)
        page.reload()  # the name and the task survive a reload
        expect(done).to_have_text("3 / 6")
        expect(page.locator("#prompt")).to_have_text(fourth)
        page.keyboard.press("1")
        expect(done).to_have_text("4 / 6")
        page.goto(f"{url}/report")  # the report page shows the same record
        expect(page.locator("#annotators tbody tr")).to_have_count(1)
        expect(page.locator("#training")).to_contain_text("8 decided pairs for training")
    table = read_judgements(record)
    assert list(table["kind"]) == ["best"] * 4 + ["undo", "best"]
    live = live_judgements(table)
    chosen = [
        (images[0][:4], best) for images, best in zip(live["images"], live["best"], strict=True)
    ]
    assert chosen == [("0000", "0000_00"), ("0001", "0001_01"), ("0002", "0002_02"),
                      ("0003", "0003_00")]  # fmt: skip


@pytest.mark.parametrize("protocol", ["score", "pairwise"])
def test_the_score_and_pairwise_pages_by_keyboard(page, tmp_path, protocol):
    from playwright.sync_api import expect

    samples, record = tmp_path / "samples", tmp_path / "labels.jsonl"
    write_world_set(samples, prompts=2, images_per_prompt=3, seed=6)
    with running(create_app(samples, record, protocol)) as url:
        page.goto(url)
        page.fill("#name", "ben")
        page.press("#name", "Enter")
        done = page.locator("#mine-text")
        expect(done).to_have_text("0 / 2")
        keys = ["1", "1", "ArrowLeft", "0", "1", " "] if protocol == "score" else ["2"]
        for key in keys:  # score: good, good, back one, bad (instead), good, save
            page.keyboard.press(key)
        expect(done).to_have_text("1 / 2")
        page.keyboard.press(" ")  # pairwise: tie; score: nothing rated yet, nothing saved
        expect(done).to_have_text("2 / 2" if protocol == "pairwise" else "1 / 2")
    lines = list(read_judgements(record).itertuples())
    if protocol == "score":
        (line,) = lines
        assert list(line.scores.values()) == [1, 0, 1]
    else:
        assert [line.winner for line in lines] == ["b", "tie"]
