"""Screenshot of the labelling page for the README: docs/images/label-app.png.

    python tests/scripts/label_screenshot.py [OUT.png]

Toy-world images (16 px, shown 16x larger), the best-of-4 protocol, two annotators sharing
each prompt, one decision already made; Debian's chromium, headless, through Playwright.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from d3po.labelling.app import create_app
from d3po.labelling.benchmark import write_world_set
from d3po.labelling.server import running

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        samples = Path(folder) / "samples"
        write_world_set(samples, prompts=24, images_per_prompt=4, seed=11, unsafe_rate=0.4)
        app = create_app(samples, Path(folder) / "labels.jsonl", "best", annotators_per_prompt=2)
        with running(app) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 600}, bypass_csp=True)
            page.goto(url)
            page.fill("#name", "ana")
            page.press("#name", "Enter")
            page.wait_for_selector("#images img")
            page.keyboard.press("2")
            page.wait_for_function(
                "document.querySelector('#mine-text').textContent.startsWith('1')"
            )
            page.wait_for_function("[...document.images].every(i => i.complete && i.width >= 256)")
            page.screenshot(path=str(out))
            browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/label-app.png"))
