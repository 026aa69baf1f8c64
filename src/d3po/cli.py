"""`d3po <step>`: the commands the workflow rules call (they run without Snakemake too).

    d3po sample   --settings JSON --out DIR [--adapter CHECKPOINT]   held-out sample set
                  --settings JSON --checkpoint ADAPTER=DIR ...        one set per checkpoint
    d3po score    --samples DIR --proxy NAME=CSV ... [--options JSON]     score tables
    d3po train    --settings JSON --run-dir DIR --state-dir DIR       any method, resumable
                  [--samples DIR --judgements JSONL]                 on human judgements
                  [--samples DIR --scores PROXY=CSV ...]             ... on a proxy's score order
                  [--init-adapter CHECKPOINT]                        from an earlier round
    d3po methods                                                      methods and their options
    d3po annotate --samples DIR --criterion NAME --out JSONL          toy world's annotator
                  [--via-http --protocol best|score|pairwise]        ... through the app
    d3po label SAMPLES_DIR --judgements JSONL [--host --port --protocol --token ...]
    d3po label-report --samples DIR --judgements JSONL                 counts, agreement, pairs
    d3po label-import reference|label-studio FILE... --samples DIR --out JSONL
    d3po label-benchmark [--annotators 8 --decisions 250]              decisions per second
    d3po collect  --runs JSON --out CSV [--options JSON]              evaluation table
    d3po plot-curves  --evaluation CSV --out PNG [--metrics LABEL=CSV ...] [--objective NAME]
    d3po plot-samples --before DIR --after LABEL=DIR ... --out PNG
    d3po table    --evaluation CSV ... --out-csv CSV --out-md MD [--out-html HTML] [--paper JSON]
    d3po benchmark ...                                                throughput and memory
    d3po gpu-smoke                                                    what a job sees
    d3po check-config FILE                          a workflow config: there, YAML, a mapping

JSON arguments are inline JSON or the path of a JSON file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from d3po.errors import ConfigError, InputFileError, MissingFileError, UserError


def _json(value: str) -> Any:
    """Inline JSON, or the path of a JSON file; an error says which ``value`` was taken for."""
    path = Path(value)
    is_file = not value.lstrip().startswith(("{", "[")) and path.is_file()
    try:
        return json.loads(path.read_text() if is_file else value)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        what = f"{value}: not JSON" if is_file else f"{value!r} is not JSON, nor a JSON file"
        raise argparse.ArgumentTypeError(f"{what} ({error})") from None


def _json_of(kind: type, shape: str) -> Callable[[str], Any]:
    """An argparse type: ``_json``, whose value must be a ``kind`` (named ``shape``)."""

    def parse(value: str) -> Any:
        parsed = _json(value)
        if not isinstance(parsed, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {shape}, got {parsed!r}")
        return parsed

    return parse


JSON_OBJECT, JSON_LIST = _json_of(dict, "object {...}"), _json_of(list, "list [...]")


def _labelled(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got '{value}'")
    return label, Path(path)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, 1 to 65535, got '{value}'")
    return int(value)


#: A list of LABEL=PATH values; a repeated option adds to it (argparse's default keeps the last).
LABELLED_LIST = {"type": _labelled, "nargs": "+", "action": "extend"}


def cmd_sample(args: argparse.Namespace) -> None:
    from d3po.config import SampleSettings, parse
    from d3po.sample_checkpoints import write_checkpoint_samples, write_samples

    settings = parse(SampleSettings, args.settings)
    if args.checkpoint:
        write_checkpoint_samples(settings, args.checkpoint)
        print(f"wrote {len(args.checkpoint)} sample sets")
        return
    if args.out is None:
        raise ValueError("d3po sample: give --out DIR, or --checkpoint ADAPTER=DIR ...")
    manifest = write_samples(
        settings, args.out, adapter=args.adapter, keep_trajectories=args.trajectories
    )
    print(f"wrote {len(manifest)} images to {args.out}")


def cmd_methods(args: argparse.Namespace) -> None:
    import dataclasses

    from d3po.methods import method_classes

    for name, method in method_classes().items():
        feedback = "one proxy reward" if method.signal == "reward" else "preferences (Pareto)"
        judged = ", judged sets" if method.accepts_judgements else ""
        print(f"{name}: {method.summary}\n    trains on: {feedback}{judged}")
        for option in dataclasses.fields(method.Options):
            kind = getattr(option.type, "__name__", option.type)  # a class, or a string
            print(f"    methods.{name}.{option.name} = {option.default!r} ({kind})")


def cmd_score(args: argparse.Namespace) -> None:
    from d3po.rewards import score_sample_dir

    scores = score_sample_dir(args.samples, dict(args.proxy), options=args.options)
    for proxy, values in scores.groupby("proxy", sort=False)["value"]:
        print(f"{proxy}: mean {values.mean():.4f} over {len(values)} images")


def cmd_train(args: argparse.Namespace) -> None:
    from d3po.config import TrainSettings, parse
    from d3po.train import train

    settings = parse(TrainSettings, args.settings)
    labelled = None
    if args.samples or args.judgements or args.scores:
        from d3po.feedback import load_labelled, load_scored

        if not args.samples or bool(args.judgements) == bool(args.scores):
            raise ConfigError(
                "--samples goes with one of --judgements (people's) or --scores (a proxy's)"
            )
        # a round that starts from an earlier adapter uses the set's recorded log-probs
        reduction = settings.training.log_prob_reduction if args.init_adapter else None
        load = load_labelled if args.judgements else load_scored
        labelled = load(args.samples, args.judgements or args.scores, settings.sampler, reduction)
    train(settings, args.run_dir, args.state_dir, labelled=labelled, init_adapter=args.init_adapter)


def cmd_annotate(args: argparse.Namespace) -> None:
    if args.via_http:
        from d3po.labelling.simulate import annotate_via_http

        count = annotate_via_http(
            args.samples, args.criterion, args.out, args.annotator, args.protocol
        )
        print(f"sent {count} {args.protocol} decisions ({args.criterion}) over HTTP to {args.out}")
        return
    from d3po.feedback import simulate_judgements

    count = simulate_judgements(args.samples, args.criterion, args.out, args.annotator)
    print(f"appended {count} judgements ({args.criterion}) to {args.out}")


def cmd_label(args: argparse.Namespace) -> None:
    from d3po.labelling.server import serve

    serve(
        args.samples,
        args.judgements,
        host=args.host,
        port=args.port,
        token=args.token,
        protocol=args.protocol,
        annotators_per_prompt=args.annotators_per_prompt,
        scale=args.scale,
    )


def cmd_label_report(args: argparse.Namespace) -> None:
    from d3po.labelling.report import format_report, label_report
    from d3po.preferences import read_judgements
    from d3po.sample_sets import read_manifest

    manifest = read_manifest(args.samples)
    judgements = read_judgements(args.judgements, manifest=manifest)
    report = label_report(manifest, judgements)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_label_import(args: argparse.Namespace) -> None:
    from d3po.labelling import importers

    if args.format == "reference":
        count = importers.import_reference(args.samples, args.files, args.out)
    else:
        (export,) = args.files
        count = importers.import_label_studio(args.samples, export, args.out, args.fields)
    print(f"appended {count} judgements ({args.format}) to {args.out}")


def cmd_collect(args: argparse.Namespace) -> None:
    from d3po.scores import check_run_scores
    from d3po.tables import collect_evaluation

    if not args.runs:
        raise ConfigError("--runs: the list of run descriptions is empty; nothing to collect")
    for run in args.runs:
        check_run_scores(run)
    score_csvs = [Path(csv) for run in args.runs for csv in run["scores"]]
    descriptions = [run for run in args.runs for _ in run["scores"]]
    collect_evaluation(score_csvs, descriptions, args.out, proxy_options=args.options)


def cmd_plot_curves(args: argparse.Namespace) -> None:
    from d3po.plots import plot_curves

    plot_curves(args.evaluation, args.out, dict(args.metrics or ()), objective=args.objective)


def cmd_plot_samples(args: argparse.Namespace) -> None:
    from d3po.plots import sample_grid

    sample_grid(args.before, dict(args.after), args.out)


def cmd_table(args: argparse.Namespace) -> None:
    from d3po.tables import results_table

    summary = results_table(
        args.evaluation,
        args.out_csv,
        args.out_md,
        paper=args.paper,
        objectives=args.objectives,
        out_html=args.out_html,
    )
    print(Path(args.out_md).read_text() if len(summary) < 40 else f"wrote {args.out_md}")


def cmd_check_config(args: argparse.Namespace) -> None:
    """`make run` calls this first: Snakemake reports a missing config file with a traceback
    and a YAML error without the file or line. The workflow checks the fields themselves."""
    import yaml

    path = args.file
    if not path.is_file():
        raise MissingFileError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputFileError(f"{path}{where}: not valid YAML: {error.problem}") from None
    if not isinstance(config, dict):
        raise InputFileError(f"{path}: expected config fields (a YAML mapping), got {config!r}")


#: Steps whose own parser takes the remaining arguments (`d3po benchmark --help`): the module
#: whose ``main(argv)`` runs the step, and the step's help line.
FORWARDED = {
    "label-benchmark": ("d3po.labelling.benchmark", "decisions/s of the labelling app"),
    "benchmark": ("d3po.benchmark", "training throughput and peak memory"),
    "pretrain-toy": ("d3po.pretrain", "pretrain the embedded toy model"),
}


def cmd_forwarded(args: argparse.Namespace) -> None:
    """Run the step's module's own ``main`` on the arguments `d3po` left unparsed."""
    importlib.import_module(FORWARDED[args.step][0]).main(args.rest)


def _add_forwarded(steps: argparse._SubParsersAction, name: str) -> None:
    parser = steps.add_parser(name, help=FORWARDED[name][1], add_help=False)
    parser.set_defaults(run=cmd_forwarded)


def cmd_gpu_smoke(args: argparse.Namespace) -> None:
    from d3po.benchmark import gpu_smoke

    gpu_smoke()


#: preferences.PROTOCOLS and the app's SCALES, repeated so that `d3po --help` and the steps that
#: need neither do not import pandas (0.4 s); test_cli checks that the copies agree.
PROTOCOL_CHOICES = ("best", "score", "pairwise")
SCALE_CHOICES = ("good-bad", "1-5")


def _fields(value: str) -> tuple[str, str]:
    left, sep, right = value.partition(",")
    if not (sep and left and right):
        raise argparse.ArgumentTypeError(f"expected LEFT,RIGHT data field names, got '{value}'")
    return left, right


def _add_label_parsers(steps: argparse._SubParsersAction) -> None:
    """`d3po label`, `label-report`, `label-import`, `label-benchmark` (d3po.labelling)."""
    label = steps.add_parser("label", help="judge a sample set in the browser")
    label.add_argument("samples", type=Path, metavar="SAMPLES_DIR")
    label.add_argument("--judgements", type=Path, required=True, help="JSON Lines, appended to")
    label.add_argument("--host", default="127.0.0.1", help="other than loopback needs a token")
    label.add_argument("--port", type=_port, default=8000)
    label.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="best")
    label.add_argument("--annotators-per-prompt", type=int, default=1)
    label.add_argument(
        "--scale",
        choices=SCALE_CHOICES,
        default="good-bad",
        help="the score protocol's values",
    )
    label.add_argument("--token", help="access token (generated when binding beyond loopback)")
    label.set_defaults(run=cmd_label)

    report = steps.add_parser("label-report", help="annotators, agreement, pairs for training")
    report.add_argument("--samples", type=Path, required=True)
    report.add_argument("--judgements", type=Path, required=True)
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(run=cmd_label_report)

    imports = steps.add_parser("label-import", help="judgements made elsewhere, as JSON Lines")
    imports.add_argument("format", choices=("reference", "label-studio"))
    imports.add_argument(
        "files",
        type=Path,
        nargs="+",
        help="reference: one JSON per annotator; label-studio: the export",
    )
    imports.add_argument("--samples", type=Path, required=True)
    imports.add_argument("--out", type=Path, required=True, help="JSON Lines, appended to")
    imports.add_argument(
        "--fields",
        type=_fields,
        default=("image1", "image2"),
        help="label-studio: the data fields of the left and right image",
    )
    imports.set_defaults(run=cmd_label_import)

    _add_forwarded(steps, "label-benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3po", description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    sample = steps.add_parser("sample", help="write a held-out sample set")
    sample.add_argument("--settings", type=_json, required=True)
    sample.add_argument("--out", type=Path)
    sample.add_argument("--adapter", type=Path, help="a LoRA checkpoint folder")
    sample.add_argument(
        "--checkpoint",
        **LABELLED_LIST,
        metavar="ADAPTER=DIR",
        help="sample several checkpoints with one model load: a sample set DIR per adapter",
    )
    sample.add_argument(
        "--trajectories", action="store_true", help="also keep every step (to train on judgements)"
    )
    sample.set_defaults(run=cmd_sample)

    score = steps.add_parser("score", help="score a sample set with one or more proxies")
    score.add_argument("--samples", type=Path, required=True)
    score.add_argument(
        "--proxy", **LABELLED_LIST, required=True, help="NAME=CSV: a proxy, its table"
    )
    score.add_argument("--options", type=JSON_OBJECT, help="{proxy: {option: value}}")
    score.set_defaults(run=cmd_score)

    train = steps.add_parser("train", help="train one method (resumes from --state-dir)")
    train.add_argument("--settings", type=_json, required=True)
    train.add_argument("--run-dir", type=Path, required=True)
    train.add_argument("--state-dir", type=Path, required=True)
    train.add_argument("--samples", type=Path, help="a sample set made with --trajectories")
    train.add_argument("--judgements", type=Path, help="JSON Lines judgements on --samples")
    train.add_argument("--scores", **LABELLED_LIST, help="PROXY=CSV score tables of --samples")
    train.add_argument("--init-adapter", type=Path, help="start from this LoRA checkpoint")
    train.set_defaults(run=cmd_train)

    steps.add_parser("methods", help="list the training methods and their options").set_defaults(
        run=cmd_methods
    )

    annotate = steps.add_parser("annotate", help="toy world: the simulated annotator judges")
    annotate.add_argument("--samples", type=Path, required=True)
    annotate.add_argument("--criterion", required=True, help="undistorted, safe or aligned")
    annotate.add_argument("--out", type=Path, required=True, help="JSON Lines, appended to")
    annotate.add_argument("--annotator", default="simulated")
    annotate.add_argument(
        "--via-http", action="store_true", help="judge through the labelling app, like a person"
    )
    annotate.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        default="score",
        help="with --via-http: the app's protocol",
    )
    annotate.set_defaults(run=cmd_annotate)
    _add_label_parsers(steps)

    collect = steps.add_parser("collect", help="summarise score files into an evaluation table")
    collect.add_argument("--runs", type=JSON_LIST, required=True)
    collect.add_argument(
        "--options", type=JSON_OBJECT, help="{proxy: {option: value}} of the scoring"
    )
    collect.add_argument("--out", type=Path, required=True)
    collect.set_defaults(run=cmd_collect)

    curves = steps.add_parser("plot-curves", help="held-out reward vs samples seen")
    curves.add_argument("--evaluation", type=Path, nargs="+", action="extend", required=True)
    curves.add_argument("--metrics", type=_labelled, nargs="*", action="extend")
    curves.add_argument("--objective", help="the proxy trained on (the training panel's unit)")
    curves.add_argument("--out", type=Path, required=True)
    curves.set_defaults(run=cmd_plot_curves)

    grid = steps.add_parser("plot-samples", help="before/after sample grid")
    grid.add_argument("--before", type=Path, required=True)
    grid.add_argument("--after", **LABELLED_LIST, required=True)
    grid.add_argument("--out", type=Path, required=True)
    grid.set_defaults(run=cmd_plot_samples)

    table = steps.add_parser("table", help="the results table (CSV + Markdown)")
    table.add_argument("--evaluation", type=Path, nargs="+", action="extend", required=True)
    table.add_argument("--out-csv", type=Path, required=True)
    table.add_argument("--out-md", type=Path, required=True)
    table.add_argument("--out-html", type=Path, help="also an HTML page (for the report)")
    table.add_argument("--paper", type=JSON_OBJECT)
    table.add_argument("--objectives", type=JSON_OBJECT)
    table.set_defaults(run=cmd_table)

    check = steps.add_parser("check-config", help="a workflow config file: there and YAML")
    check.add_argument("file", type=Path)
    check.set_defaults(run=cmd_check_config)

    _add_forwarded(steps, "benchmark")
    smoke = steps.add_parser("gpu-smoke", help="devices, versions and a tiny forward pass")
    smoke.set_defaults(run=cmd_gpu_smoke)
    _add_forwarded(steps, "pretrain-toy")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.step in FORWARDED:
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _quiet_libraries()
    try:
        args.run(args)
    except UserError as error:  # one line for what the user can fix; anything else: traceback
        _fail(args.step, str(error))
    except OSError as error:
        if error.filename is None:
            raise
        # a path that cannot be opened as it is (absent, a folder, no permission): the user's
        _fail(args.step, f"{error.filename}: {error.strerror}")


def _fail(step: str, message: str) -> NoReturn:
    print(f"d3po {step}: error: {message}", file=sys.stderr)
    raise SystemExit(1) from None


def _quiet_libraries() -> None:
    """Keep job logs readable: library info and download bars off (set before their import)."""
    for variable, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(variable, value)
