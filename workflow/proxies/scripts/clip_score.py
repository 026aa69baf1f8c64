"""CLIP score of a sample set: the cosine similarity of each image's and its prompt's open_clip
embeddings (higher = the image matches its prompt better), written as a score table
``id,proxy,value`` (the proxy is the output file's name, clip_score for clip_score.csv).

Run by the rule in ../clip_score.smk, in its own environment (../envs/clip_score.yaml), or by
hand:

    python clip_score.py --samples DIR --out DIR/clip_score.csv [--model ViT-B-32]
        [--pretrained laion2b_s34b_b79k | --pretrained /path/open_clip_pytorch_model.bin]
        [--model local-dir:/path/folder]   # a folder with open_clip_config.json and weights

Weights are read from disk only, never downloaded: a local file, a folder, or a pretrained tag
already in the open_clip / Hugging Face cache (``--cache-dir``). Random weights are refused.

Reference: Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning"
(2021) uses w * max(cos, 0) with w = 2.5; this is the plain cosine, which orders images alike.
"""

# (no `from __future__` import: Snakemake's script: directive puts its preamble first)
import argparse
import os
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: the weights must be on disk

import open_clip  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def load_clip(model: str, pretrained: str | None, cache_dir: str | None, device: str):
    """(model, preprocess, tokenizer) with real weights, or an error saying where to put them."""
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model,
            pretrained=pretrained,
            cache_dir=cache_dir,
            device=device,
            require_pretrained=True,
        )
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        raise SystemExit(
            f"clip_score: cannot load open_clip model {model!r} with weights {pretrained!r} "
            f"from disk ({error}). Set proxies.clip_score.pretrained to a local weights file, "
            "or proxies.clip_score.model to local-dir:FOLDER (open_clip_config.json + weights)."
        ) from None
    return clip.eval(), preprocess, open_clip.get_tokenizer(model, cache_dir=cache_dir)


@torch.no_grad()
def clip_scores(
    samples_dir: Path,
    model: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    cache_dir: str | None = None,
    batch_size: int = 32,
    proxy: str = "clip_score",
) -> pd.DataFrame:
    """Score every image of the set's manifest.csv: a table id, proxy, value."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip, preprocess, tokenizer = load_clip(model, pretrained, cache_dir, device)
    manifest = pd.read_csv(Path(samples_dir) / "manifest.csv", dtype={"id": str, "path": str})
    values = []
    for start in range(0, len(manifest), batch_size):
        batch = manifest.iloc[start : start + batch_size]
        pictures = [Image.open(Path(samples_dir) / path).convert("RGB") for path in batch["path"]]
        images = torch.stack([preprocess(picture) for picture in pictures]).to(device)
        texts = tokenizer(list(batch["prompt"])).to(device)
        image_embeddings = torch.nn.functional.normalize(clip.encode_image(images).float(), dim=-1)
        text_embeddings = torch.nn.functional.normalize(clip.encode_text(texts).float(), dim=-1)
        values.extend((image_embeddings * text_embeddings).sum(dim=-1).cpu().tolist())
    return pd.DataFrame({"id": manifest["id"], "proxy": proxy, "value": values})


def write_scores(table: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CLIP score of a sample set (a score table)")
    parser.add_argument("--samples", type=Path, required=True, help="a sample set folder")
    parser.add_argument("--out", type=Path, required=True, help="the score table (NAME.csv)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name or local-dir:DIR")
    parser.add_argument("--pretrained", default="laion2b_s34b_b79k", help="tag or weights file")
    parser.add_argument("--cache-dir", default=None, help="open_clip / Hugging Face cache")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    table = clip_scores(
        args.samples,
        args.model,
        args.pretrained,
        args.cache_dir,
        args.batch_size,
        proxy=args.out.stem,
    )
    write_scores(table, args.out)
    print(f"{args.out.stem}: mean {table['value'].mean():.4f} over {len(table)} images")


def run_rule(rule) -> None:
    """Run for the rule's script: directive, with its log as stdout and stderr."""
    options = [f"--{key.replace('_', '-')}={value}" for key, value in rule.params.options.items()]
    arguments = ["--samples", rule.input.samples, "--out", rule.output.csv, *options]
    with open(rule.log[0], "w") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            main(arguments)
        except BaseException:
            traceback.print_exc()
            raise


if "snakemake" in globals():  # the script: directive defines `snakemake`
    run_rule(globals()["snakemake"])
elif __name__ == "__main__":
    main()
