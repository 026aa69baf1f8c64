"""`d3po <step>`: the commands the workflow rules call (they run without Snakemake too).

    d3po sample   --settings JSON --out DIR [--adapter CHECKPOINT]   held-out sample set
                  --settings JSON --checkpoint ADAPTER=DIR ...        one set per checkpoint
    d3po score    --samples DIR --proxy NAME --out CSV [--options JSON]
    d3po train    --settings JSON --run-dir DIR --state-dir DIR       D3PO or DDPO, resumable
                  [--samples DIR --judgements JSONL]                 D3PO on human judgements
    d3po annotate --samples DIR --criterion NAME --out JSONL          toy world's annotator
    d3po collect  --runs JSON --out CSV                               evaluation table
    d3po plot-curves  --evaluation CSV --out PNG [--metrics LABEL=CSV ...]
    d3po plot-samples --before DIR --after LABEL=DIR ... --out PNG
    d3po table    --evaluation CSV ... --out-csv CSV --out-md MD [--paper JSON]
    d3po benchmark ...                                                throughput and memory
    d3po gpu-smoke                                                    what a job sees

JSON arguments are inline JSON or the path of a JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _json(value: str) -> Any:
    path = Path(value)
    if not value.lstrip().startswith(("{", "[")) and path.is_file():
        return json.loads(path.read_text())
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON and not a JSON file: {error}") from error


def _labelled(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got '{value}'")
    return label, Path(path)


def cmd_sample(args: argparse.Namespace) -> None:
    from d3po.config import SampleSettings, parse
    from d3po.evaluate import write_samples

    settings = parse(SampleSettings, args.settings)
    if args.checkpoint:
        from d3po.evaluate import write_checkpoint_samples

        write_checkpoint_samples(settings, args.checkpoint)
        print(f"wrote {len(args.checkpoint)} sample sets")
        return
    if args.out is None:
        raise ValueError("d3po sample: give --out DIR, or --checkpoint ADAPTER=DIR ...")
    manifest = write_samples(
        settings, args.out, adapter=args.adapter, keep_trajectories=args.trajectories
    )
    print(f"wrote {len(manifest)} images to {args.out}")


def cmd_score(args: argparse.Namespace) -> None:
    from d3po.rewards import score_sample_dir

    scores = score_sample_dir(args.samples, args.proxy, args.out, options=args.options)
    print(f"{args.proxy}: mean {scores['value'].mean():.4f} over {len(scores)} images")


def cmd_train(args: argparse.Namespace) -> None:
    from d3po.config import TrainSettings, parse
    from d3po.train import train

    settings = parse(TrainSettings, args.settings)
    labelled = None
    if args.samples or args.judgements:
        from d3po.feedback import load_labelled

        if not (args.samples and args.judgements):
            raise ValueError("--samples and --judgements go together (a judged sample set)")
        labelled = load_labelled(args.samples, args.judgements)
    train(settings, args.run_dir, args.state_dir, labelled=labelled)


def cmd_annotate(args: argparse.Namespace) -> None:
    from d3po.feedback import simulate_judgements

    count = simulate_judgements(args.samples, args.criterion, args.out, args.annotator)
    print(f"appended {count} judgements ({args.criterion}) to {args.out}")


def cmd_collect(args: argparse.Namespace) -> None:
    from d3po.plots import collect_evaluation

    runs = args.runs
    score_csvs = [Path(csv) for run in runs for csv in run["scores"]]
    descriptions = [
        {k: v for k, v in run.items() if k != "scores"} for run in runs for _ in run["scores"]
    ]
    collect_evaluation(score_csvs, descriptions, args.out)


def cmd_plot_curves(args: argparse.Namespace) -> None:
    from d3po.plots import plot_curves

    plot_curves(args.evaluation, args.out, dict(args.metrics) if args.metrics else None)


def cmd_plot_samples(args: argparse.Namespace) -> None:
    from d3po.plots import sample_grid

    sample_grid(args.before, dict(args.after), args.out)


def cmd_table(args: argparse.Namespace) -> None:
    from d3po.plots import results_table

    summary = results_table(
        args.evaluation, args.out_csv, args.out_md, paper=args.paper, objectives=args.objectives
    )
    print(Path(args.out_md).read_text() if len(summary) < 40 else f"wrote {args.out_md}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from d3po.benchmark import main as benchmark_main

    benchmark_main(args.rest)


def cmd_gpu_smoke(args: argparse.Namespace) -> None:
    from d3po.benchmark import gpu_smoke

    gpu_smoke()


def cmd_pretrain_toy(args: argparse.Namespace) -> None:
    from d3po.pretrain import main as pretrain_main

    pretrain_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3po", description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    sample = steps.add_parser("sample", help="write a held-out sample set")
    sample.add_argument("--settings", type=_json, required=True)
    sample.add_argument("--out", type=Path)
    sample.add_argument("--adapter", type=Path, help="a LoRA checkpoint folder")
    sample.add_argument(
        "--checkpoint",
        type=_labelled,
        nargs="+",
        metavar="ADAPTER=DIR",
        help="sample several checkpoints with one model load: a sample set DIR per adapter",
    )
    sample.add_argument(
        "--trajectories", action="store_true", help="also keep every step (to train on judgements)"
    )
    sample.set_defaults(run=cmd_sample)

    score = steps.add_parser("score", help="score a sample set with one proxy")
    score.add_argument("--samples", type=Path, required=True)
    score.add_argument("--proxy", required=True)
    score.add_argument("--out", type=Path, required=True)
    score.add_argument("--options", type=_json, default=None)
    score.set_defaults(run=cmd_score)

    train = steps.add_parser("train", help="train D3PO or DDPO (resumes from --state-dir)")
    train.add_argument("--settings", type=_json, required=True)
    train.add_argument("--run-dir", type=Path, required=True)
    train.add_argument("--state-dir", type=Path, required=True)
    train.add_argument("--samples", type=Path, help="a sample set made with --trajectories")
    train.add_argument("--judgements", type=Path, help="JSON Lines judgements on --samples")
    train.set_defaults(run=cmd_train)

    annotate = steps.add_parser("annotate", help="toy world: the simulated annotator judges")
    annotate.add_argument("--samples", type=Path, required=True)
    annotate.add_argument("--criterion", required=True, help="undistorted, safe or aligned")
    annotate.add_argument("--out", type=Path, required=True, help="JSON Lines, appended to")
    annotate.add_argument("--annotator", default="simulated")
    annotate.set_defaults(run=cmd_annotate)

    collect = steps.add_parser("collect", help="summarise score files into an evaluation table")
    collect.add_argument("--runs", type=_json, required=True)
    collect.add_argument("--out", type=Path, required=True)
    collect.set_defaults(run=cmd_collect)

    curves = steps.add_parser("plot-curves", help="held-out reward vs samples seen")
    curves.add_argument("--evaluation", type=Path, nargs="+", required=True)
    curves.add_argument("--metrics", type=_labelled, nargs="*")
    curves.add_argument("--out", type=Path, required=True)
    curves.set_defaults(run=cmd_plot_curves)

    grid = steps.add_parser("plot-samples", help="before/after sample grid")
    grid.add_argument("--before", type=Path, required=True)
    grid.add_argument("--after", type=_labelled, nargs="+", required=True)
    grid.add_argument("--out", type=Path, required=True)
    grid.set_defaults(run=cmd_plot_samples)

    table = steps.add_parser("table", help="the results table (CSV + Markdown)")
    table.add_argument("--evaluation", type=Path, nargs="+", required=True)
    table.add_argument("--out-csv", type=Path, required=True)
    table.add_argument("--out-md", type=Path, required=True)
    table.add_argument("--paper", type=_json, default=None)
    table.add_argument("--objectives", type=_json, default=None)
    table.set_defaults(run=cmd_table)

    for name, function, text in (
        ("benchmark", cmd_benchmark, "training throughput and peak memory"),
        ("gpu-smoke", cmd_gpu_smoke, "devices, versions and a tiny forward pass"),
        ("pretrain-toy", cmd_pretrain_toy, "pretrain the embedded toy model"),
    ):
        # their own parsers take the remaining arguments (`d3po benchmark --help`)
        steps.add_parser(name, help=text, add_help=False).set_defaults(run=function)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.run in (cmd_benchmark, cmd_pretrain_toy):
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _quiet_libraries()
    from d3po.config import StateError

    try:
        args.run(args)
    except (ValueError, FileNotFoundError, StateError) as error:  # the user can fix these
        print(f"d3po {args.step}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _quiet_libraries() -> None:
    """Keep job logs readable: library info and download bars off (set before their import)."""
    import os

    for variable, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(variable, value)
