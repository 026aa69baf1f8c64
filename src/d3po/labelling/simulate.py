"""The toy world's simulated annotator, judging through the app's HTTP interface like a person.

It starts the app on 127.0.0.1 on a free port, asks for task after task, looks at the images
it is served (PNG bytes over HTTP, judged by ``d3po.judges``), answers with the protocol of the
run and stops the app when nothing is left for it. The judgements end up in the same record a
person's would.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from d3po.judges import criterion_judge
from d3po.labelling.app import create_app
from d3po.labelling.server import running


def _image(client: httpx.Client, url: str) -> torch.Tensor:
    response = client.get(url)
    response.raise_for_status()
    pixels = np.array(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255  # (3, H, W)


def _answer(protocol: str, ids: list[str], scores: np.ndarray) -> dict[str, Any] | None:
    """The decision a rater who scores images this way gives (None: skip, nothing to choose)."""
    if protocol == "score":
        return {"scores": {i: int(s > 0.5) for i, s in zip(ids, scores, strict=True)}}
    if protocol == "pairwise":
        return {"winner": "a" if scores[0] > scores[1] else "b" if scores[1] > scores[0] else "tie"}
    if scores.max() == scores.min():
        return None
    return {"best": ids[int(np.argmax(scores))]}


def annotate_via_http(
    samples_dir: Path,
    criterion: str,
    out: Path,
    annotator: str = "simulated",
    protocol: str = "score",
) -> int:
    """Judge every task of the set over HTTP; returns the number of decisions sent."""
    judge = criterion_judge(criterion)
    app = create_app(samples_dir, out, protocol=protocol, annotators_per_prompt=1)
    decisions = 0
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        view = client.get("/api/next", params={"annotator": annotator}).json()
        while view["task"] is not None:
            task = view["task"]
            images = torch.stack([_image(client, image["url"]) for image in task["images"]])
            ids = [image["id"] for image in task["images"]]
            scores = np.asarray(judge(images, [task["prompt"]] * len(ids)), dtype=float)
            answer = _answer(protocol, ids, scores)
            body = {"annotator": annotator, "task": task["key"]}
            path = "/api/skip" if answer is None else "/api/decide"
            response = client.post(path, json={**body, **(answer or {})})
            response.raise_for_status()
            view = response.json()
            decisions += answer is not None
    return decisions
