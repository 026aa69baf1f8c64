"""Proxy objectives ("rewards"): string-named plug-ins with one signature.

Every proxy is a function

    fn(images, prompts, **options) -> np.ndarray of shape (B,), float64, higher = better

with ``images`` a float tensor (B, 3, H, W) in [0, 1] and ``prompts`` a list of B strings. D3PO
only uses the ORDER of these values (Pareto preferences); DDPO uses them as scalar rewards.

Registered here:

- ``jpeg_incompressibility``: size of the image saved as JPEG (quality 95), in kB (1 kB = 1000
  bytes, as in ddpo-pytorch and the D3PO reference code, which divide the byte count by 1000).
- ``jpeg_compressibility``: the negative of that.
- ``aesthetic``: the LAION "improved aesthetic predictor" (an MLP 768-1024-128-64-16-1 on the
  L2-normalised CLIP ViT-L/14 image embedding, weights sac+logos+ava1-l14-linearMSE.pth).

Other modules register more proxies with :func:`register`; modules listed in ``_PLUGIN_MODULES``
are imported on the first lookup, so their names appear without an explicit import. A proxy's
options are its keyword parameters after ``images, prompts``: their names, type hints and
defaults are the declaration that :func:`check_proxy_options` checks the config against.

References: Yang et al., "Using Human Feedback to Fine-tune Diffusion Models without Any Reward
Model" (D3PO, CVPR 2024, arXiv 2311.13231); Black et al., "Training Diffusion Models with
Reinforcement Learning" (DDPO, arXiv 2305.13301); github.com/christophschuhmann/
improved-aesthetic-predictor (the aesthetic head).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from d3po.atomic import write_atomically
from d3po.config import typed_value
from d3po.errors import ConfigError, InputFileError, MissingFileError
from d3po.sample_sets import read_manifest, read_set_images, to_pil

ProxyFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class ProxyOption:
    """One keyword option of a proxy (config ``proxies.NAME.OPTION``)."""

    name: str
    type: Any
    """The type hint: int, float, str, bool or ``X | None``."""
    default: Any

    def __str__(self) -> str:
        type_name = getattr(self.type, "__name__", str(self.type))
        return f"{self.name} ({type_name}, default {self.default!r})"


@dataclass(frozen=True)
class Proxy:
    fn: ProxyFn
    options: dict[str, ProxyOption]
    unit: str
    """Unit of the values, for plot axes ('kB'); empty for a pure number."""
    blank_floor: bool = False
    """No image content takes the value below a blank image's (a JPEG's header): tables show
    changes relative to the value above it."""
    prompt_check: Callable[[str], object] | None = None
    """Raises ValueError (ConfigError) for a prompt the proxy cannot judge (the toy judges read a
    colour and a shape from it); the workflow runs it on each prompt list the proxy scores, before
    any job."""


_REGISTRY: dict[str, Proxy] = {}
# Modules that register proxies when imported (e.g. the toy-world judges); imported lazily.
_PLUGIN_MODULES: list[str] = ["d3po.judges"]
_plugins_loaded = False

AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def register(
    name: str,
    unit: str = "",
    blank_floor: bool = False,
    prompt_check: Callable[[str], object] | None = None,
) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator: register ``fn`` as the proxy ``name`` (names must be unique), whose values
    are in ``unit`` (shown on plot axes); ``blank_floor``, ``prompt_check``: see ``Proxy``.

    ``fn(images, prompts, *, option=default, ...)``: every parameter after the first two is an
    option, with a type hint and a default; ``**kwargs`` is refused, so that a misspelt option
    in a config is an error instead of being ignored.
    """

    def decorator(fn: ProxyFn) -> ProxyFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"proxy {name!r} is already registered")
        _REGISTRY[name] = Proxy(fn, _declared_options(name, fn), unit, blank_floor, prompt_check)
        return fn

    return decorator


def _declared_options(name: str, fn: ProxyFn) -> dict[str, ProxyOption]:
    hints = typing.get_type_hints(fn)
    options = {}
    for parameter in list(inspect.signature(fn).parameters.values())[2:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD or parameter.default is parameter.empty:
            raise TypeError(
                f"proxy {name!r}: option {parameter.name!r} needs a default and a type hint "
                "(no **kwargs: options are declared one by one)"
            )
        options[parameter.name] = ProxyOption(
            parameter.name, hints.get(parameter.name, Any), parameter.default
        )
    return options


def _load_plugins() -> None:
    """Import the plug-in modules once; a plug-in module that does not exist yet is skipped."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module_name in _PLUGIN_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only tolerate the plug-in itself being absent, never a missing dependency inside it.
            if error.name != module_name:
                raise


def proxy_names() -> list[str]:
    """Sorted names of all registered proxies (plug-ins included)."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_proxy(name: str) -> ProxyFn:
    """The proxy function registered as ``name``; ConfigError listing the known names otherwise."""
    return _registered(name).fn


def _registered(name: str) -> Proxy:
    _load_plugins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown proxy {name!r}; known proxies: {known}")
    return _REGISTRY[name]


def check_prompts(name: str, prompts: Sequence[str]) -> None:
    """Raise the proxy's ValueError naming the prompt when ``name`` cannot judge one of them."""
    check = _registered(name).prompt_check
    for prompt in prompts if check else ():
        check(prompt)


def proxy_unit(name: str) -> str:
    """The unit proxy ``name`` declared; '' for a pure number or a proxy not registered here."""
    _load_plugins()
    return _REGISTRY[name].unit if name in _REGISTRY else ""


def blank_image_value(name: str, like: Path, options: dict[str, Any] | None = None) -> float | None:
    """Proxy ``name`` of a blank (white) image of the size of the image file ``like``, for a
    proxy with a blank floor; None for any other (or one not registered here)."""
    _load_plugins()
    if name not in _REGISTRY or not _REGISTRY[name].blank_floor:
        return None
    width, height = Image.open(like).size
    return float(score(name, torch.ones(1, 3, height, width), [""], options)[0])


def proxy_options(name: str) -> dict[str, ProxyOption]:
    """The options proxy ``name`` declares (its keyword parameters), by name."""
    return dict(_registered(name).options)


def check_proxy_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` for proxy ``name``, checked: ConfigError naming ``proxies.NAME`` on an
    unknown option or a value of the wrong type."""
    where = f"proxies.{name}"
    declared = _registered(name).options
    options = options or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {options!r}")
    unknown = sorted(set(options) - set(declared))
    if unknown:
        allowed = "; ".join(map(str, declared.values())) or "none"
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(map(repr, unknown))} of proxy {name!r}; "
            f"its options: {allowed}"
        )
    return {
        key: typed_value(declared[key].type, value, f"{where}.{key}")
        for key, value in options.items()
    }


def score(
    name: str, images: torch.Tensor, prompts: list[str], options: dict[str, Any] | None = None
) -> np.ndarray:
    """Score ``images`` (B, 3, H, W) in [0, 1] with proxy ``name``: float64 array (B,)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    values = get_proxy(name)(images, prompts, **check_proxy_options(name, options))
    values = np.asarray(values, dtype=np.float64)
    assert values.shape == (images.shape[0],), f"proxy {name!r} returned shape {values.shape}"
    return values


# ---------------------------------------------------------------------------------------------
# JPEG size
# ---------------------------------------------------------------------------------------------


def jpeg_kilobytes(image: Image.Image, quality: int = 95) -> float:
    """Size of one 8-bit image saved as JPEG at ``quality``, in kB (1000 bytes, the unit of the
    reference implementations and of the paper's numbers)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


@register("jpeg_incompressibility", unit="kB", blank_floor=True)
def jpeg_incompressibility(
    images: torch.Tensor, prompts: list[str], quality: int = 95
) -> np.ndarray:
    """JPEG size in kB (1 kB = 1000 bytes) at quality 95: bigger files = more detail."""
    return np.array([jpeg_kilobytes(image, quality) for image in to_pil(images)], np.float64)


@register("jpeg_compressibility", unit="kB", blank_floor=True)
def jpeg_compressibility(images: torch.Tensor, prompts: list[str], quality: int = 95) -> np.ndarray:
    """Negative JPEG size in kB (1 kB = 1000 bytes) at quality 95: smaller files score higher."""
    return -jpeg_incompressibility(images, prompts, quality=quality)


# ---------------------------------------------------------------------------------------------
# LAION aesthetic predictor
# ---------------------------------------------------------------------------------------------


class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP; state-dict keys ``layers.{0,2,4,6,7}.*``.

    No activations between the Linear layers (as in the released linearMSE model); the dropout
    layers only matter in training and are inactive in eval mode.
    """

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised CLIP image embeddings -> (B, 1) scores."""
        return self.layers(embedding)


def _load_head(head_path: str, embed_dim: int) -> torch.nn.Module:
    state_dict = torch.load(head_path, map_location="cpu", weights_only=True)
    head = AestheticHead(embed_dim)
    try:
        head.load_state_dict(state_dict)
    except RuntimeError as error:
        raise InputFileError(
            f"aesthetic head {head_path} does not fit a {embed_dim}-wide CLIP embedding "
            f"(expected the MLP of {AESTHETIC_HEAD_FILE}): {error}"
        ) from error
    return head.eval()


def _resolve_clip_weights(
    clip_model: str, clip_pretrained: str | None, clip_checkpoint: str | None, allow_random: bool
) -> str | None:
    """The ``pretrained`` argument for open_clip; refuses silent random weights."""
    if clip_checkpoint:
        if not Path(clip_checkpoint).is_file():
            raise MissingFileError(
                f"aesthetic proxy: CLIP weights file not found: {clip_checkpoint} "
                "(config key proxies.aesthetic.clip_checkpoint)"
            )
        return clip_checkpoint
    if clip_model.startswith("local-dir:"):
        local_dir = Path(clip_model.removeprefix("local-dir:"))
        patterns = ("*.safetensors", "*.bin", "*.pth")
        has_weights = any(any(local_dir.glob(pattern)) for pattern in patterns)
        if not has_weights and not allow_random:
            raise MissingFileError(f"aesthetic proxy: no CLIP weights in {clip_model}")
        return None
    if clip_pretrained is None and not allow_random:
        raise ConfigError(
            "aesthetic proxy: clip_pretrained is null, which means random CLIP weights; "
            "set proxies.aesthetic.allow_random_clip: true if that is meant (tests only)"
        )
    return clip_pretrained


@functools.lru_cache(maxsize=4)
def _load_aesthetic(
    clip_model: str,
    clip_pretrained: str | None,
    clip_checkpoint: str | None,
    head_path: str | None,
    allow_random_clip: bool,
    device: str,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Load (CLIP model, head, preprocessing config) once per settings and device."""
    import open_clip  # heavy: imported only when the aesthetic proxy is used

    if not head_path or not Path(head_path).is_file():  # fail before the slow CLIP load
        where = f"file not found: {head_path}" if head_path else "no head file given"
        raise MissingFileError(
            f"aesthetic proxy: {where}. Download {AESTHETIC_HEAD_FILE} from the LAION "
            f"improved-aesthetic-predictor repository ({AESTHETIC_HEAD_URL}) and set the config "
            "key proxies.aesthetic.head_path to its local path."
        )
    pretrained = _resolve_clip_weights(
        clip_model, clip_pretrained, clip_checkpoint, allow_random_clip
    )
    try:
        clip = open_clip.create_model(clip_model, pretrained=pretrained, device=device).eval()
    except RuntimeError as error:
        raise MissingFileError(
            f"aesthetic proxy: could not load open_clip {clip_model!r} with pretrained="
            f"{pretrained!r} ({error}). Without network access, download the weights elsewhere "
            "and set proxies.aesthetic.clip_checkpoint to the local file."
        ) from error
    head = _load_head(head_path, int(clip.visual.output_dim)).to(device)
    return clip, head, open_clip.get_model_preprocess_cfg(clip)


def clip_preprocess(images: torch.Tensor, preprocess_cfg: dict[str, Any]) -> torch.Tensor:
    """CLIP preprocessing on tensors: bicubic resize of the short side, centre crop, normalise."""
    size = preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    scale = max(height / images.shape[-2], width / images.shape[-1])
    resized_hw = (round(images.shape[-2] * scale), round(images.shape[-1] * scale))
    x = torch.nn.functional.interpolate(
        images.float(), size=resized_hw, mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1)
    top, left = (resized_hw[0] - height) // 2, (resized_hw[1] - width) // 2
    x = x[..., top : top + height, left : left + width]
    mean = torch.tensor(preprocess_cfg["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@register("aesthetic")
def aesthetic(
    images: torch.Tensor,
    prompts: list[str],
    head_path: str | None = None,
    clip_model: str = "ViT-L-14",
    clip_pretrained: str | None = "openai",
    clip_checkpoint: str | None = None,
    allow_random_clip: bool = False,
) -> np.ndarray:
    """LAION aesthetic score: MLP head on the L2-normalised CLIP image embedding.

    Options (config ``proxies.aesthetic.*``): ``head_path`` (the file
    sac+logos+ava1-l14-linearMSE.pth), ``clip_model`` (an open_clip model name, or
    ``local-dir:DIR`` holding an open_clip_config.json), ``clip_pretrained`` (tag or local file),
    ``clip_checkpoint`` (local open_clip weights; overrides ``clip_pretrained``),
    ``allow_random_clip`` (permit random CLIP weights: tests only).
    """
    device = str(images.device)
    clip, head, preprocess_cfg = _load_aesthetic(
        clip_model, clip_pretrained, clip_checkpoint, head_path, bool(allow_random_clip), device
    )
    with torch.no_grad():
        embedding = clip.encode_image(clip_preprocess(images, preprocess_cfg))  # (B, D)
        embedding = torch.nn.functional.normalize(embedding.float(), dim=-1)
        values = head(embedding).squeeze(-1)  # (B,)
    return values.double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Scoring a sample directory
# ---------------------------------------------------------------------------------------------


def score_sample_dir(
    samples_dir: Path,
    out_csvs: dict[str, Path],
    options: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Score every image of a sample set with each proxy of ``out_csvs`` (proxy -> CSV), the
    images read once; write one ``id, proxy, value`` table per proxy and return them all.

    ``options``: options per proxy, as the config's ``proxies:`` block; checked before any
    image is read.
    """
    options = {proxy: check_proxy_options(proxy, (options or {}).get(proxy)) for proxy in out_csvs}
    manifest = read_manifest(Path(samples_dir))
    values: dict[str, list[np.ndarray]] = {proxy: [] for proxy in out_csvs}
    for start in range(0, len(manifest), batch_size):
        batch = manifest.iloc[start : start + batch_size]
        images = read_set_images(samples_dir, batch)
        for proxy in out_csvs:
            values[proxy].append(score(proxy, images, list(batch["prompt"]), options[proxy]))
    tables = []
    for proxy, out_csv in out_csvs.items():
        scores = pd.DataFrame(
            {
                "id": manifest["id"].astype(str),
                "proxy": proxy,
                "value": np.concatenate(values[proxy]) if values[proxy] else np.zeros(0),
            }
        )
        write_atomically(scores, Path(out_csv))
        tables.append(scores)
    return pd.concat(tables, ignore_index=True)
