"""Load the text-to-image models D3PO fine-tunes, and give them LoRA adapters.

Every model is a diffusers ``StableDiffusionPipeline`` (UNet2DConditionModel, CLIPTextModel,
CLIPTokenizer, DDIMScheduler, and a VAE for latent models), whatever its size:

- a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a local folder in the diffusers
  layout, loaded offline unless ``local_files_only`` is false;
- ``tiny-random``: an embedded pixel-space model with the same architecture, built in memory
  from a seed (1.7 M parameters, 16x16 RGB), for laptops, tests and CI;
- ``toy``: the same architecture pretrained on the procedural world of ``d3po.world``, shipped
  in ``d3po/assets/toy`` (built by ``d3po pretrain-toy``).

A pixel-space model has ``vae=None``: its "latents" are images in [-1, 1].

LoRA follows the diffusers/peft convention: ``unet.add_adapter`` on the attention projections,
saved with ``save_lora_weights`` and the adapter's metadata (rank, alpha), so that
``pipe.load_lora_weights(folder)`` loads it back at its trained strength. The
reference policy of D3PO is the same UNet with the adapter switched off (``reference_policy``),
never a second copy of the weights.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from d3po.errors import ConfigError, InputFileError, MissingFileError

EMBEDDED_MODELS = ("tiny-random", "toy", "sd15-random")
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
TOY_MODEL_DIR = Path(__file__).parent / "assets" / "toy"

#: Words the embedded tokenizer knows as single tokens; any other word is spelled by characters.
TINY_VOCABULARY = tuple(
    (
        "a an the of and with on in photo picture "
        "red green blue yellow orange purple white black pink brown gray "
        "circle square triangle star cross ring "
        "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear "
        "raccoon fox wolf lizard beetle ant butterfly fish shark whale dolphin squirrel mouse "
        "rat snake turtle frog chicken duck goose bee pig turkey fly llama camel bat gorilla "
        "hedgehog kangaroo"
    ).split()
)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how."""

    source: str = "tiny-random"
    """'tiny-random', 'toy', a hub id or a local diffusers folder."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local folders."""
    local_files_only: bool = True
    """Never touch the network: the weights must already be in a folder or the HF cache."""
    dtype: str = "float32"
    """Weights dtype of the frozen parts: float32, float16 or bfloat16."""
    seed: int = 0
    """Seed of the tiny-random weights."""


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA adapter trained on the UNet attention projections (q, k, v, out)."""

    rank: int = 4
    alpha: float = 4.0


class ModelNotFoundError(MissingFileError):
    """The weights of a configured model are not on this machine, or not whole."""


#: Components of a diffusers folder that D3PO never loads (see ``_absent_components``).
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def load_pipeline(spec: ModelSpec, device: torch.device | str = "cpu"):
    """Load the pipeline named by ``spec``, frozen (no gradients), on ``device``."""
    from diffusers import DDIMScheduler
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Job logs keep our own lines: no loading bars of diffusers ("Loading pipeline components")
    # or transformers ("Loading weights"), nor of the pipeline's loop (set_progress_bar_config).
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    check_model_files(spec.source, spec.revision, spec.local_files_only)
    if spec.source == "tiny-random":
        pipe = build_tiny_pipeline(seed=spec.seed)
    elif spec.source == "sd15-random":
        pipe = build_sd15_shaped_pipeline(seed=spec.seed)
    elif spec.source == "toy":
        pipe = _load_diffusers_folder(TOY_MODEL_DIR, rebuild_hint="d3po pretrain-toy")
    elif Path(spec.source).expanduser().exists():
        pipe = _load_diffusers_folder(Path(spec.source).expanduser())
    else:
        pipe = _load_from_hub(spec)
    # Sampling is always DDIM (the D3PO/DDPO policy is a stochastic DDIM step).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    dtype = torch_dtype(spec.dtype)
    if dtype != torch.float32 and torch.device(device).type == "cpu":
        warnings.warn(
            f"model.dtype={spec.dtype} is meant for GPUs; on the CPU the model runs in float32",
            stacklevel=2,
        )
        dtype = torch.float32
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype=dtype)


def torch_dtype(name: str) -> torch.dtype:
    """'float32' | 'float16' | 'bfloat16' -> torch dtype."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ConfigError(f"model.dtype: unknown dtype '{name}'; use one of {', '.join(dtypes)}")
    return dtypes[name]


def check_source(source: str) -> None:
    """Fail early, naming the field, when ``source`` names a local folder that is not there.

    A hub id is 'name' or 'owner/name'; a source starting with '.', '/' or '~', or with more
    than one slash, is a folder. Looks at names only: :func:`check_model_files` reads the files.
    """
    if source in EMBEDDED_MODELS or Path(source).expanduser().exists():
        return
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelNotFoundError(
            f"model.source: folder '{source}' does not exist. Point it at a diffusers model "
            "folder (with model_index.json), a hub id, or one of: " + ", ".join(EMBEDDED_MODELS)
        )


def check_model_files(
    source: str, revision: str | None = None, local_files_only: bool = True
) -> None:
    """Fail early, in one line naming the field or the file, when the model cannot load.

    Cheap (file headers only): a local folder holds a diffusers model whose weights files are
    present and whole; a hub id, when loading offline, is in the local HF cache, and that copy
    is whole. Online hub ids are not checked (the loader may download them).
    """
    check_source(source)
    if source in ("tiny-random", "sd15-random"):  # built in memory
        return
    if source == "toy":
        check_model_folder(TOY_MODEL_DIR, hint="Rebuild it with `d3po pretrain-toy`.")
    elif Path(source).expanduser().exists():
        check_model_folder(Path(source).expanduser())
    elif _offline(local_files_only):
        check_model_folder(_cached_snapshot(source, revision), hint=_download_hint(source))


def _offline(local_files_only: bool) -> bool:
    """Offline as huggingface_hub reads HF_HUB_OFFLINE (at import: "1", "true", "yes", "on")."""
    from huggingface_hub import is_offline_mode

    return local_files_only or is_offline_mode()


def _download_hint(source: str) -> str:
    return (
        f"Download it once on a machine with network (`huggingface-cli download {source}`) and "
        "copy the HF cache, or set model.source to a local folder."
    )


def _cached_snapshot(source: str, revision: str | None) -> Path:
    """The folder of hub model ``source`` in the local HF cache; ModelNotFoundError if absent."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        where = f"'{source}'" + (f" revision '{revision}'" if revision else "")
        raise ModelNotFoundError(
            f"model.source: {where} is not in the local HF cache, and the model loads offline "
            f"(model.local_files_only: true, or HF_HUB_OFFLINE). {_download_hint(source)}"
        ) from error


def check_model_folder(folder: Path, hint: str = "") -> None:
    """A diffusers model folder: model_index.json, and for every component D3PO loads that has
    weights, a weights file; every ``.safetensors`` file whole (its header against its size)."""
    index_path = Path(folder) / "model_index.json"
    if not index_path.is_file():
        raise ModelNotFoundError(
            f"{index_path} is missing: '{folder}' is not a diffusers model folder. {hint}".strip()
        )
    index = json.loads(index_path.read_text())
    for name, entry in index.items():
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(entry, list):
            continue
        if entry[0] is None:  # a component the model does not have (a pixel-space VAE)
            continue
        component = Path(folder) / name
        if not component.is_dir():
            raise ModelNotFoundError(f"{component} is missing (listed in {index_path}). {hint}")
        if not (component / "config.json").is_file():
            continue  # a scheduler or tokenizer: no weights
        safetensors = sorted(component.glob("*.safetensors"))
        if not safetensors and not any(component.glob("*.bin")):
            raise ModelNotFoundError(
                f"{component}: no weights file (*.safetensors or *.bin). {hint}".strip()
            )
        for path in safetensors:
            check_safetensors(path, hint)


def check_safetensors(path: Path, hint: str = "") -> None:
    """ModelNotFoundError naming ``path`` when it is missing, cut short or unreadable.

    safetensors reads the header only and checks that it describes the file's size exactly.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():  # also a cache symlink whose blob is gone
        raise ModelNotFoundError(f"{path} is missing. {hint}".strip())
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as error:
        raise ModelNotFoundError(
            f"{path}: truncated or corrupt ({error}). {hint}".strip()
        ) from error


def _load_diffusers_folder(folder: Path, rebuild_hint: str | None = None):
    from diffusers import StableDiffusionPipeline

    hint = f" Rebuild it with `{rebuild_hint}`." if rebuild_hint else ""
    try:  # check_model_files has found model_index.json and whole weights files
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, local_files_only=True, **_absent_components(folder)
        )
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"could not load the model in '{folder}': {error}.{hint}"
        ) from error
    # A tokenizer folder without its vocabulary loads as a 3-token tokenizer, silently.
    expected = pipe.text_encoder.config.vocab_size
    if len(pipe.tokenizer) != expected:
        raise ModelNotFoundError(
            f"{folder / 'tokenizer'}: the tokenizer has {len(pipe.tokenizer)} tokens but the text "
            f"encoder expects {expected}; its vocabulary file is missing or corrupt.{hint}"
        )
    return pipe


def _absent_components(folder: Path | None = None) -> dict:
    """Components D3PO never uses (set to None), plus the VAE of a pixel-space folder."""
    absent = dict.fromkeys(UNUSED_COMPONENTS)
    if folder is not None:
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("vae", [None])[0] is None:
            absent["vae"] = None
    return absent | {"requires_safety_checker": False}


def _load_from_hub(spec: ModelSpec):
    """Load a hub model from the local HF cache (or download it if allowed)."""
    from diffusers import StableDiffusionPipeline

    offline = _offline(spec.local_files_only)
    try:
        return StableDiffusionPipeline.from_pretrained(
            spec.source,
            revision=spec.revision,
            local_files_only=offline,
            **_absent_components(),
        )
    except (OSError, ValueError) as error:
        how = (
            _download_hint(spec.source)
            if offline
            else "Check the hub id and your network/HF token."
        )
        reason = str(error).replace("\n", " ")
        raise ModelNotFoundError(
            f"model.source: cannot load '{spec.source}' "
            f"({'offline' if offline else 'online'}): {reason}. {how}"
        ) from error


# --------------------------------------------------------------------------- the tiny model


def build_tokenizer(words: tuple[str, ...] = TINY_VOCABULARY, max_length: int = 16):
    """A CLIP BPE tokenizer in which each of ``words`` is one token.

    The base vocabulary is CLIP's byte-level alphabet (so any text still tokenizes, letter by
    letter); one merge per extra letter builds each known word. The vocabulary and merges are
    passed as objects: transformers 5 silently ignores ``vocab_file=``/``merges_file=``.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [s + "</w>" for s in alphabet]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))  # a new token takes the next id
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_tiny_pipeline(seed: int = 0):
    """The embedded pixel-space text-to-image model, with random weights drawn from ``seed``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _random_text_encoder(tokenizer, width=64, layers=2, heads=4, mlp_width=128)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        # diffusers' StableDiffusionPipeline turns clip_sample off (with a warning) for every
        # model, so the predicted x_0 is not clipped; say so here instead of asking for it.
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return _pipeline_without_vae(tokenizer, text_encoder, unet, scheduler)


def build_sd15_shaped_pipeline(seed: int = 0):
    """A UNet with Stable Diffusion 1.5's configuration and random weights, for benchmarks.

    860 M parameters, 4x64x64 latents (512 px). The VAE is left out (latents are not decoded)
    and a one-layer 768-wide text encoder stands in for CLIP ViT-L: the UNet is the cost.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer = build_tokenizer(max_length=77)
    torch.manual_seed(seed)
    text_encoder = _random_text_encoder(tokenizer, width=768, layers=1, heads=12, mlp_width=3072)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return _pipeline_without_vae(tokenizer, text_encoder, unet, scheduler)


def _random_text_encoder(tokenizer, width: int, layers: int, heads: int, mlp_width: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=mlp_width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _pipeline_without_vae(tokenizer, text_encoder, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=None,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        **_absent_components(),
    )


# --------------------------------------------------------------------------- LoRA


def add_lora(unet, spec: LoraSpec) -> list[torch.nn.Parameter]:
    """Attach a trainable LoRA adapter (zero at start) to the UNet; return its parameters."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGET_MODULES,
        )
    )
    cast_training_params(unet, dtype=torch.float32)  # the adapter trains in fp32 on a half base
    return [p for p in unet.parameters() if p.requires_grad]


@contextlib.contextmanager
def reference_policy(unet) -> Iterator[None]:
    """Run the UNet as the frozen base model: the adapter off, restored on exit.

    ``disable_adapters`` gives the base outputs exactly (checked in the tests); note that
    ``active_adapters()`` still lists the adapter meanwhile, so it is no test of the state.
    """
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def save_lora(unet, folder: Path) -> Path:
    """Save the UNet adapter in diffusers' format, which ``pipe.load_lora_weights`` reads.

    The adapter's peft config (rank, alpha, target modules) goes into the file's metadata:
    without it diffusers loads every adapter with alpha = rank, so one trained with alpha 8
    and rank 4 would run at half strength.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=state,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    return folder / "pytorch_lora_weights.safetensors"


def load_lora(pipe, folder: Path) -> None:
    """Load a saved adapter into the pipeline (and switch it on)."""
    weights = Path(folder) / "pytorch_lora_weights.safetensors"
    if not weights.exists():
        raise MissingFileError(
            f"{weights} is missing: '{folder}' is not a LoRA checkpoint written by `d3po train`"
        )
    pipe.load_lora_weights(str(folder), weight_name=weights.name)


def load_lora_state(unet, folder: Path) -> None:
    """Load a saved adapter's weights into the UNet's existing (trainable) adapter: resume."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(
        str(folder), weight_name="pytorch_lora_weights.safetensors"
    )
    state = {key.removeprefix("unet."): value for key, value in state.items()}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state))
    if result.unexpected_keys:
        raise InputFileError(
            f"{folder}: adapter keys do not match the model: {result.unexpected_keys[:3]}"
        )
