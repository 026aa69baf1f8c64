"""Model loading and LoRA: the reference is the adapter switched off; checkpoints load back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from d3po.models import (
    LoraSpec,
    ModelNotFoundError,
    ModelSpec,
    add_lora,
    build_tokenizer,
    check_model_files,
    check_source,
    load_lora,
    load_lora_state,
    load_pipeline,
    reference_policy,
    save_lora,
)
from d3po.sampling import sample


def unet_inputs(pipe):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    tokens = pipe.tokenizer(["a red circle", "a cat"], padding="max_length", return_tensors="pt")
    return x, torch.tensor([999, 10]), pipe.text_encoder(tokens.input_ids)[0]


def perturb(parameters, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for parameter in parameters:
        parameter.data = 0.05 * torch.randn(parameter.shape, generator=generator)


@torch.no_grad()
def test_adapter_off_reproduces_the_base_model_exactly(fresh_pipe):
    x, t, embeds = unet_inputs(fresh_pipe)
    base = fresh_pipe.unet(x, t, embeds).sample
    perturb(add_lora(fresh_pipe.unet, LoraSpec(rank=4, alpha=4)))
    adapted = fresh_pipe.unet(x, t, embeds).sample
    with reference_policy(fresh_pipe.unet):
        reference = fresh_pipe.unet(x, t, embeds).sample
    assert not torch.allclose(adapted, base)
    assert torch.equal(reference, base)
    torch.testing.assert_close(fresh_pipe.unet(x, t, embeds).sample, adapted)  # restored


def test_adapter_is_the_only_trainable_part(fresh_pipe):
    parameters = add_lora(fresh_pipe.unet, LoraSpec(rank=2, alpha=2))
    names = [n for n, p in fresh_pipe.unet.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    assert len(parameters) == len(names)
    assert not any(p.requires_grad for p in fresh_pipe.text_encoder.parameters())


def test_saved_adapter_loads_with_diffusers_and_gives_identical_samples(
    fresh_pipe, sampler, tmp_path
):
    perturb(add_lora(fresh_pipe.unet, LoraSpec()))
    expected = sample(fresh_pipe, ["a red circle", "a blue square"], 2, [5, 6], sampler)
    weights = save_lora(fresh_pipe.unet, tmp_path / "adapter")
    assert weights.exists()

    reloaded = load_pipeline(ModelSpec(source="tiny-random", seed=0))
    load_lora(reloaded, tmp_path / "adapter")  # diffusers' pipe.load_lora_weights
    again = sample(reloaded, ["a red circle", "a blue square"], 2, [5, 6], sampler)
    torch.testing.assert_close(again.images, expected.images)
    torch.testing.assert_close(again.log_probs, expected.log_probs)


def test_adapter_state_loads_back_into_a_trainable_adapter(fresh_pipe, tmp_path):
    perturb(add_lora(fresh_pipe.unet, LoraSpec()), seed=3)
    save_lora(fresh_pipe.unet, tmp_path)
    other = load_pipeline(ModelSpec(source="tiny-random", seed=0))
    add_lora(other.unet, LoraSpec())
    load_lora_state(other.unet, tmp_path)
    expected = {n: p for n, p in fresh_pipe.unet.named_parameters() if "lora" in n}
    for name, parameter in other.unet.named_parameters():
        if "lora" in name:
            torch.testing.assert_close(parameter, expected[name])


def test_local_folder_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    loaded = load_pipeline(ModelSpec(source=str(tmp_path / "model")))
    assert loaded.vae is None
    x, t, embeds = unet_inputs(tiny_pipe)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.unet(x, t, embeds).sample, tiny_pipe.unet(x, t, embeds).sample
        )


def test_tiny_random_is_deterministic_from_its_seed(tiny_pipe):
    again = load_pipeline(ModelSpec(source="tiny-random", seed=0))
    other = load_pipeline(ModelSpec(source="tiny-random", seed=1))
    first = next(tiny_pipe.unet.parameters())
    assert torch.equal(next(again.unet.parameters()), first)
    assert not torch.equal(next(other.unet.parameters()), first)


def test_missing_local_folder_names_the_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pipeline(ModelSpec(source=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_pipeline(ModelSpec(source=str(tmp_path / "empty")))


def test_hub_id_offline_without_weights_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_pipeline(ModelSpec(source="stable-diffusion-v1-5/stable-diffusion-v1-5"))


def test_missing_adapter_names_the_file(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        load_lora(tiny_pipe, tmp_path)


def test_tokenizer_keeps_known_words_whole_and_spells_unknown_ones():
    tokenizer = build_tokenizer(("red", "circle"))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("zed").input_ids)
    assert spelled[1:-1] == ["z", "e", "d</w>"]


def test_half_precision_on_a_cpu_falls_back_to_float32_with_a_warning():
    with pytest.warns(UserWarning, match="float32"):
        pipe = load_pipeline(ModelSpec(source="tiny-random", dtype="float16"), "cpu")
    assert next(pipe.unet.parameters()).dtype == torch.float32


def test_adapter_alpha_survives_a_round_trip_through_load_lora_weights(fresh_pipe, tmp_path):
    """rank 4, alpha 8: diffusers' loader must run the adapter at alpha / rank = 2, not 1."""
    perturb(add_lora(fresh_pipe.unet, LoraSpec(rank=4, alpha=8.0)), seed=5)
    x, t, embeds = unet_inputs(fresh_pipe)
    with torch.no_grad():
        expected = fresh_pipe.unet(x, t, embeds).sample
    save_lora(fresh_pipe.unet, tmp_path)

    reloaded = load_pipeline(ModelSpec(source="tiny-random", seed=0))
    reloaded.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors")
    config = next(iter(reloaded.unet.peft_config.values()))
    assert (config.r, config.lora_alpha) == (4, 8.0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.unet(x, t, embeds).sample, expected)
    ours = load_pipeline(ModelSpec(source="tiny-random", seed=0))
    load_lora(ours, tmp_path)  # the project's own checkpoint loading
    with torch.no_grad():
        torch.testing.assert_close(ours.unet(x, t, embeds).sample, expected)


def test_tiny_model_asks_for_no_clipping_and_raises_no_clip_sample_warning():
    """diffusers turns clip_sample off for these pipelines; the model says so itself."""
    import warnings

    from d3po.models import build_tiny_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = build_tiny_pipeline(seed=0)
        loaded = load_pipeline(ModelSpec(source="toy"))
    assert pipe.scheduler.config.clip_sample is False
    assert loaded.scheduler.config.clip_sample is False


def _saved_tiny_folder(pipe, folder):
    pipe.save_pretrained(folder)
    return folder / "unet" / "diffusion_pytorch_model.safetensors"


def test_truncated_or_missing_weights_are_found_before_loading(tiny_pipe, tmp_path):
    weights = _saved_tiny_folder(tiny_pipe, tmp_path / "model")
    check_model_files(str(tmp_path / "model"))  # whole: no error
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError, match="truncated") as raised:
        check_model_files(str(tmp_path / "model"))
    assert str(weights) in str(raised.value) and "\n" not in str(raised.value)
    weights.write_bytes(data[:5])
    with pytest.raises(ModelNotFoundError, match=str(weights)):
        check_model_files(str(tmp_path / "model"))
    weights.unlink()
    with pytest.raises(ModelNotFoundError, match="no weights file") as raised:
        check_model_files(str(tmp_path / "model"))
    assert str(weights.parent) in str(raised.value)


def test_hub_id_not_in_the_cache_is_found_before_loading(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: only local_files_only refuses
    with pytest.raises(ModelNotFoundError, match="not in the local HF cache") as raised:
        check_model_files("someone/not-downloaded", local_files_only=True)
    assert "someone/not-downloaded" in str(raised.value) and "\n" not in str(raised.value)
    check_model_files("someone/not-downloaded", local_files_only=False)  # may download
    check_source("someone/not-downloaded")  # a name is not checked against the cache


def test_adapter_trains_in_float32_on_a_half_precision_base(fresh_pipe):
    unet = fresh_pipe.unet.to(torch.bfloat16)
    parameters = add_lora(unet, LoraSpec())
    assert parameters and all(p.dtype == torch.float32 for p in parameters)
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if "lora" not in n)


def test_loading_a_model_writes_no_progress_bar(capfd):
    load_pipeline(ModelSpec(source="toy"))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("value, mode", [("0", "online"), ("false", "online"), ("1", "offline")])
def test_hf_hub_offline_means_what_it_means_to_huggingface_hub(tmp_path, value, mode):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported, so each value needs a process."""
    code = (
        "from d3po.models import ModelNotFoundError, check_model_files\n"
        "try:\n"
        "    check_model_files('someone/not-downloaded', local_files_only=False)\n"
        "    print('online')\n"
        "except ModelNotFoundError:\n"
        "    print('offline')\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": value, "HF_HUB_CACHE": str(tmp_path)}
    env.pop("TRANSFORMERS_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == mode
