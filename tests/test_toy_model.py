"""The shipped toy model (d3po/assets/toy): it loads, and its samples show the prompt's colour."""

from __future__ import annotations

import pytest

from d3po import models
from d3po.config import SamplerSpec
from d3po.judges import judge
from d3po.models import ModelNotFoundError, ModelSpec, load_pipeline
from d3po.sampling import sample
from d3po.world import PROMPTS


@pytest.fixture(scope="module")
def toy_pipe():
    return load_pipeline(ModelSpec(source="toy"))


def test_toy_model_is_the_world_model(toy_pipe):
    assert toy_pipe.vae is None
    assert toy_pipe.unet.config.sample_size == 16
    assert (models.TOY_MODEL_DIR / "TRAINING.md").exists()


def test_toy_samples_have_the_prompt_colour(toy_pipe):
    prompts = list(PROMPTS)  # 24 prompts, one image each, seeds the pretraining never saw
    spec = SamplerSpec(num_steps=20, eta=1.0, guidance_scale=4.0, images_per_call=24)
    images = sample(toy_pipe, prompts, 1, list(range(500, 524)), spec).images
    verdicts = judge(images, prompts)
    assert verdicts["colour_correct"].mean() >= 0.9


def test_missing_toy_model_names_file_and_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "TOY_MODEL_DIR", tmp_path)
    with pytest.raises(ModelNotFoundError, match="model_index.json") as error:
        load_pipeline(ModelSpec(source="toy"))
    assert "d3po pretrain-toy" in str(error.value)


def test_toy_model_with_a_lost_vocabulary_names_the_tokenizer_and_the_rebuild(
    tmp_path, monkeypatch
):
    import shutil

    copy = tmp_path / "toy"
    shutil.copytree(models.TOY_MODEL_DIR, copy)
    (copy / "tokenizer" / "tokenizer.json").unlink()
    monkeypatch.setattr(models, "TOY_MODEL_DIR", copy)
    with pytest.raises(ModelNotFoundError, match="tokenizer") as error:
        load_pipeline(ModelSpec(source="toy"))
    assert "d3po pretrain-toy" in str(error.value)


def test_toy_model_with_corrupt_weights_names_the_file(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "toy"
    shutil.copytree(models.TOY_MODEL_DIR, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setattr(models, "TOY_MODEL_DIR", copy)
    with pytest.raises(ModelNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_pipeline(ModelSpec(source="toy"))
