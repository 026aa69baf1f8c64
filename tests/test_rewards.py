"""Tests for d3po.rewards: JPEG proxies against PIL directly, the registry, the aesthetic proxy on
a tiny random open_clip model, and scoring a sample directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CLIP_MODEL_CONFIG
from PIL import Image

from d3po import rewards
from d3po.errors import ConfigError
from d3po.sample_sets import to_pil

TINY_CLIP_CONFIG = {"model_cfg": TINY_CLIP_MODEL_CONFIG, "preprocess_cfg": {}}


def _smooth_and_noise(size: int = 64) -> torch.Tensor:
    ramp = torch.linspace(0, 1, size)
    smooth = torch.stack(
        [ramp.expand(size, size), ramp.expand(size, size).T, torch.full((size, size), 0.5)]
    )
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.stack([smooth, noise])  # (2, 3, H, W)


def test_smooth_image_is_more_compressible_than_noise() -> None:
    images = _smooth_and_noise()
    compressibility = rewards.score("jpeg_compressibility", images, ["a", "b"])
    incompressibility = rewards.score("jpeg_incompressibility", images, ["a", "b"])
    assert compressibility.dtype == np.float64 and compressibility.shape == (2,)
    assert compressibility[0] > compressibility[1]
    np.testing.assert_array_equal(compressibility, -incompressibility)


def test_jpeg_kilobytes_match_pil_bytes_over_1000() -> None:
    images = _smooth_and_noise()
    expected = []
    for image in images:
        array = (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        expected.append(len(buffer.getvalue()) / 1000)  # the reference implementations' kB
    np.testing.assert_allclose(
        rewards.score("jpeg_incompressibility", images, ["a", "b"]), expected
    )


def test_unknown_proxy_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown proxy 'nope'; known proxies: .*aesthetic.*jpeg"):
        rewards.get_proxy("nope")
    assert {"aesthetic", "jpeg_compressibility", "jpeg_incompressibility"} <= set(
        rewards.proxy_names()
    )


def test_register_adds_a_proxy_with_its_declared_options() -> None:
    @rewards.register("_test_brightness", unit="pixel value")
    def brightness(images: torch.Tensor, prompts: list[str], gain: float = 1.0) -> np.ndarray:
        return gain * images.mean(dim=(1, 2, 3)).double().numpy()

    try:
        images = torch.full((2, 3, 4, 4), 0.25)
        values = rewards.score("_test_brightness", images, ["a", "b"])
        np.testing.assert_allclose(values, [0.25, 0.25])
        values = rewards.score("_test_brightness", images, ["a", "b"], {"gain": 2})
        np.testing.assert_allclose(values, [0.5, 0.5])
        option = rewards.proxy_options("_test_brightness")["gain"]
        assert (option.type, option.default) == (float, 1.0)
        assert rewards.proxy_unit("_test_brightness") == "pixel value"
    finally:
        del rewards._REGISTRY["_test_brightness"]


def test_a_proxys_prompt_check_refuses_prompts_it_cannot_judge() -> None:
    rewards.check_prompts("toy_safe", ["a red circle", "an orange cross"])
    rewards.check_prompts("jpeg_compressibility", ["a photo of a cat"])  # reads no prompt
    with pytest.raises(ConfigError, match="unknown word 'photo' in prompt 'a photo of a cat'"):
        rewards.check_prompts("toy_safe", ["a red circle", "a photo of a cat"])


def test_a_proxy_without_declared_options_is_refused() -> None:
    with pytest.raises(TypeError, match="declared"):

        @rewards.register("_test_open")
        def open_options(images: torch.Tensor, prompts: list[str], **options) -> np.ndarray:
            return np.zeros(len(prompts))

    assert "_test_open" not in rewards._REGISTRY


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"qualty": 50}, ["proxies.jpeg_compressibility", "'qualty'", "quality (int, default 95)"]),
        ({"quality": "50"}, ["proxies.jpeg_compressibility.quality", "expected int", "'50'"]),
        ({"quality": 50.0}, ["proxies.jpeg_compressibility.quality", "expected int"]),
    ],
)
def test_unknown_or_mistyped_proxy_options_are_config_errors(options, needles) -> None:
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ConfigError) as raised:
        rewards.score("jpeg_compressibility", images, ["a"], options)
    for needle in needles:
        assert needle in str(raised.value)
    assert "\n" not in str(raised.value)


def test_aesthetic_options_are_declared() -> None:
    declared = rewards.proxy_options("aesthetic")
    assert set(declared) == {
        "head_path",
        "clip_model",
        "clip_pretrained",
        "clip_checkpoint",
        "allow_random_clip",
    }
    assert declared["allow_random_clip"].default is False
    with pytest.raises(ConfigError, match="allow_random_clip"):
        rewards.check_proxy_options("aesthetic", {"allow_random_clip": "yes"})


@pytest.fixture(scope="module")
def tiny_aesthetic_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny_clip")
    (root / "clip").mkdir()  # config only: no weights file, so open_clip initialises randomly
    (root / "clip" / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    torch.manual_seed(0)
    head = rewards.AestheticHead(TINY_CLIP_CONFIG["model_cfg"]["embed_dim"])
    head_path = root / "head.pth"
    torch.save(head.state_dict(), head_path)
    return {
        "clip_model": f"local-dir:{root / 'clip'}",
        "clip_pretrained": None,
        "allow_random_clip": True,
        "head_path": str(head_path),
    }


def test_aesthetic_head_keys_match_laion_file() -> None:
    keys = set(rewards.AestheticHead().state_dict())
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert keys == expected


def test_aesthetic_tiny_model_shape_determinism_and_batching(
    tiny_aesthetic_options: dict[str, object],
) -> None:
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    prompts = ["p"] * 4
    first = rewards.score("aesthetic", images, prompts, tiny_aesthetic_options)
    second = rewards.score("aesthetic", images, prompts, tiny_aesthetic_options)
    one_by_one = np.concatenate(
        [
            rewards.score("aesthetic", images[i : i + 1], prompts[:1], tiny_aesthetic_options)
            for i in range(4)
        ]
    )
    assert first.shape == (4,) and first.dtype == np.float64
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)
    assert np.ptp(first) > 0  # different images, different scores


def test_aesthetic_missing_head_names_the_config_key(
    tiny_aesthetic_options: dict[str, object], tmp_path: Path
) -> None:
    options = {**tiny_aesthetic_options, "head_path": str(tmp_path / "absent.pth")}
    with pytest.raises(FileNotFoundError, match=r"proxies\.aesthetic\.head_path") as error:
        rewards.score("aesthetic", torch.rand(1, 3, 8, 8), ["p"], options)
    assert "improved-aesthetic-predictor" in str(error.value)
    assert "sac+logos+ava1-l14-linearMSE.pth" in str(error.value)


def test_aesthetic_refuses_silent_random_clip(tiny_aesthetic_options: dict[str, object]) -> None:
    options = {**tiny_aesthetic_options, "clip_model": "RN50", "allow_random_clip": False}
    with pytest.raises(ValueError, match="allow_random_clip"):
        rewards.score("aesthetic", torch.rand(1, 3, 8, 8), ["p"], options)


def _write_samples(samples_dir: Path, images: torch.Tensor) -> pd.DataFrame:
    samples_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, image in enumerate(to_pil(images)):
        path = f"images/{index:04d}.png"
        (samples_dir / "images").mkdir(exist_ok=True)
        image.save(samples_dir / path)
        rows.append(
            {"id": f"s{index}", "prompt": "cat", "group": index // 2, "seed": 0, "path": path}
        )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(samples_dir / "manifest.csv", index=False)
    return manifest


def test_score_sample_dir_roundtrip(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    _write_samples(tmp_path / "samples", images)
    out_csvs = {
        "jpeg_incompressibility": tmp_path / "scores" / "jpeg.csv",
        "jpeg_compressibility": tmp_path / "scores" / "jpeg_q50.csv",
    }
    options = {"jpeg_compressibility": {"quality": 50}, "aesthetic": {"head_path": "elsewhere"}}
    returned = rewards.score_sample_dir(tmp_path / "samples", out_csvs, options, batch_size=2)
    for proxy, out_csv in out_csvs.items():
        written = pd.read_csv(out_csv)
        assert list(written.columns) == ["id", "proxy", "value"]
        assert list(written["id"]) == [f"s{i}" for i in range(5)]
        assert set(written["proxy"]) == {proxy}
        # PNG is lossless; each proxy with its own options (those of others are not its)
        expected = rewards.score(proxy, images, ["cat"] * 5, options.get(proxy))
        np.testing.assert_allclose(written["value"], expected)
        np.testing.assert_allclose(returned[returned["proxy"] == proxy]["value"], expected)
    quality_50 = pd.read_csv(out_csvs["jpeg_compressibility"])["value"]
    assert (quality_50 > -pd.read_csv(out_csvs["jpeg_incompressibility"])["value"]).all()


def test_score_sample_dir_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        rewards.score_sample_dir(tmp_path, {"jpeg_compressibility": tmp_path / "out.csv"})
    manifest = _write_samples(tmp_path / "s", torch.rand(2, 3, 8, 8))
    (tmp_path / "s" / manifest["path"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest.csv line 3: image not found.*0001.png"):
        rewards.score_sample_dir(tmp_path / "s", {"jpeg_compressibility": tmp_path / "out.csv"})
    manifest.drop(columns="group").to_csv(tmp_path / "s" / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=r"manifest.csv: missing columns \['group'\]"):
        rewards.score_sample_dir(tmp_path / "s", {"jpeg_compressibility": tmp_path / "out.csv"})


def test_missing_plugin_module_is_skipped_but_broken_plugin_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(rewards, "_PLUGIN_MODULES", ["_d3po_absent_plugin"])
    monkeypatch.setattr(rewards, "_plugins_loaded", False)
    assert "aesthetic" in rewards.proxy_names()
    (tmp_path / "_d3po_broken_plugin.py").write_text("import _d3po_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rewards, "_PLUGIN_MODULES", ["_d3po_broken_plugin"])
    monkeypatch.setattr(rewards, "_plugins_loaded", False)
    with pytest.raises(ModuleNotFoundError, match="_d3po_missing_dependency"):
        rewards.proxy_names()
