"""The workflow on a real Slurm, through `--profile profiles/slurm`, as a cluster user runs it.

Needs the single-node Slurm of tests/cluster/start_slurm.sh (partitions `cpu` and `gpu`, one
GRES gpu, account `d3po-test`, accounting through slurmdbd); `make test-cluster` starts it and
runs these tests. Without a running Slurm they fail: they are never skipped.

The site values are overridden the way a user would: the profile's partitions.yaml of the
workflow copy is rewritten for this cluster, and the account is given on the command line.
The amounts every job asks for come from the config's `resources:`, and `sacct` must show
each job in the partition, with the CPUs, memory and time limit, that those amounts promise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_end_to_end import JUDGEMENTS, TINY  # noqa: E402
from test_workflow import copy_workflow, job_counts  # noqa: E402

pytestmark = pytest.mark.cluster

ACCOUNT = os.environ.get("SLURM_TEST_ACCOUNT", "d3po-test")
# Amounts per kind of job, small enough for a 2-core machine; GPU jobs ask for the one GPU.
RESOURCES = {
    "sample": {"gpu": 1, "runtime": 10, "mem_mb": 1500, "cpus_per_task": 1},
    "train": {"gpu": 1, "runtime": 20, "mem_mb": 2500, "cpus_per_task": 2},
    "evaluate": {"gpu": 0, "runtime": 5, "mem_mb": 1000, "cpus_per_task": 1},
}
# This cluster's partitions (tests/cluster/start_slurm.sh), as a user writes them.
PARTITIONS = {
    "partitions": {
        # a score bundle runs its tables one after another: it asks for their time added up
        "cpu": {"max_runtime": "8h", "max_threads": 2, "max_mem_mb": 16000},
        "gpu": {"max_runtime": "24h", "max_threads": 2, "max_mem_mb": 16000, "max_gpu": 1},
    }
}
SACCT_FIELDS = "JobID,JobName,Partition,AllocCPUS,ReqMem,Timelimit,AllocTRES,Comment,State"
TRAIN_STATE = "results/state/compressibility/ddpo/seed0"
TRAIN_METRICS = "results/train/compressibility/ddpo/seed0/metrics.csv"


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture(scope="module")
def slurm() -> None:
    """Fail (never skip) when Slurm is not up: CI must not pass without having run these."""
    try:
        nodes = run("sinfo", "-h", "-o", "%P %T").stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.fail(f"Slurm is not running ({error}); start it: sudo tests/cluster/start_slurm.sh")
    assert "gpu" in nodes and "cpu" in nodes, nodes


def environment() -> dict[str, str]:
    """The submitting shell's environment: jobs inherit it (sbatch --export=ALL), so the
    venv's bin on PATH is how jobs find `d3po`."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": bin_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}


def make_workdir(path: Path, training: dict | None = None) -> Path:
    """A copy of the workflow with the tiny config, this cluster's partitions and labels."""
    workdir = copy_workflow(path)
    config = yaml.safe_load(TINY.read_text())
    config["resources"] = RESOURCES
    config["training"] |= training or {}
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(config))
    (workdir / "profiles/slurm/partitions.yaml").write_text(yaml.safe_dump(PARTITIONS))
    (workdir / "labels.jsonl").write_text(JUDGEMENTS)
    return workdir


def snakemake_command(*targets: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--configfile",
        "cluster.yaml",
        "--default-resources",
        f"slurm_account={ACCOUNT}",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "5",
        *targets,
    ]


def sacct(since: str) -> pd.DataFrame:
    """Allocations (no steps) submitted since ``since``, one row per job."""
    text = run("sacct", "-X", "-P", "-a", "--duplicates", "-S", since, "-o", SACCT_FIELDS).stdout
    rows = [line.split("|") for line in text.strip().splitlines()]
    return pd.DataFrame(rows[1:], columns=rows[0])


def minutes(timelimit: str) -> int:
    """sacct's Timelimit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = timelimit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def kind_of(comment: str) -> str:
    """Which config `resources:` kind a job's sacct comment (rule_NAME_...) belongs to."""
    rule = comment.removeprefix("rule_")
    if rule.startswith("train"):
        return "train"
    if rule.startswith("sample_"):
        return "sample"
    assert rule.startswith("score"), comment
    return "evaluate"


@pytest.fixture(scope="module")
def cluster_run(slurm, tmp_path_factory) -> tuple[Path, pd.DataFrame, str]:
    """The tiny workflow, run once through the slurm profile; its workdir, sacct rows, log."""
    workdir = make_workdir(tmp_path_factory.mktemp("cluster"))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    result = subprocess.run(
        snakemake_command(),
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=2400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    jobs = sacct(since)
    jobs = jobs[jobs["JobID"].isin(submitted)]
    assert len(jobs) == len(submitted), (submitted, jobs.to_string())
    return workdir, jobs, output


def test_the_workflow_completes_on_slurm(cluster_run):
    workdir, jobs, output = cluster_run
    assert (workdir / "results/results_table.md").exists()
    assert (jobs["State"] == "COMPLETED").all(), jobs.to_string()
    counts = job_counts(output)
    assert counts["train"] == 3  # compressibility: d3po, ddpo, dpok
    assert counts["train_round"] == 3  # judged: d3po, preferred_image, reward_weighted
    # one sampling job per training run, for all of its checkpoints
    assert counts["sample_checkpoints_compressibility"] == 3
    assert counts["sample_checkpoints_judged"] == 3
    print(f"\n{len(jobs)} Slurm jobs for {sum(counts.values())} workflow jobs:")
    print(jobs.drop(columns=["JobName"]).to_string(index=False))


def test_every_job_gets_what_the_config_asks_for(cluster_run):
    """Partition, GPU, CPUs, memory and time limit of every job, from sacct."""
    workdir, jobs, output = cluster_run
    config = yaml.safe_load((workdir / "cluster.yaml").read_text())
    epochs = config["training"]["epochs"] // config["training"]["checkpoint_every"]
    score_jobs = job_counts(output)["score_samples"]
    for job in jobs.itertuples():
        kind = kind_of(job.Comment)
        amounts = RESOURCES[kind]
        where = f"job {job.JobID} ({job.Comment})"
        assert job.Partition == ("gpu" if amounts["gpu"] else "cpu"), where
        assert ("gres/gpu=1" in job.AllocTRES) == bool(amounts["gpu"]), where
        assert int(job.AllocCPUS) == amounts["cpus_per_task"], where
        assert job.ReqMem == f"{amounts['mem_mb']}M", where
        # a run's sampling job: one runtime per checkpoint; the score bundle: one per table
        times = epochs if job.Comment.startswith("rule_sample_checkpoints") else 1
        times = score_jobs if kind == "evaluate" else times
        assert minutes(job.Timelimit) == times * amounts["runtime"], where
    kinds = jobs["Comment"].map(kind_of).value_counts().to_dict()
    # 1 base + 1 set to judge + 6 runs' checkpoints; 6 runs; every score table (at most 32) in
    # one bundle
    assert score_jobs <= 32
    assert kinds == {"sample": 8, "train": 6, "evaluate": 1}, kinds


def test_a_requeued_training_job_resumes_and_ends_like_an_uninterrupted_run(
    slurm, tmp_path_factory
):
    """`scontrol requeue` mid-run: Slurm restarts the job, which resumes from its state."""
    training = {"epochs": 6, "checkpoint_every": 1}
    requeued = make_workdir(tmp_path_factory.mktemp("requeued"), training)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    process = subprocess.Popen(
        snakemake_command(TRAIN_METRICS),
        cwd=requeued,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        job_id = requeue_after(requeued / TRAIN_STATE / "latest" / "settings.json")
        output, _ = process.communicate(timeout=1200)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-20000:]
    log = (requeued / "results/logs/train/compressibility/ddpo/seed0.log").read_text()
    assert "resumed from" in log, log
    history = sacct(since)
    attempts = history[history["JobID"] == job_id]["State"].tolist()
    assert "REQUEUED" in attempts and attempts[-1] == "COMPLETED", history.to_string()

    uninterrupted = make_workdir(tmp_path_factory.mktemp("uninterrupted"), training)
    local = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "cluster.yaml"]
        + ["--replace-workflow-config", TRAIN_METRICS],
        cwd=uninterrupted,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert local.returncode == 0, local.stderr[-5000:]
    expected, actual = (
        results.drop(columns=[c for c in results.columns if c.endswith("seconds")])
        for results in (pd.read_csv(run / TRAIN_METRICS) for run in (uninterrupted, requeued))
    )
    pd.testing.assert_frame_equal(actual, expected)


def requeue_after(checkpoint: Path, timeout: float = 900) -> str:
    """Wait until the training job has saved its first state (``checkpoint``, the last file
    of a save to appear), requeue it; return its id."""
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert time.monotonic() < deadline, f"{checkpoint} did not appear"
        time.sleep(0.2)
    queue = run("squeue", "-h", "-o", "%i %k").stdout.split("\n")
    job_ids = [line.split()[0] for line in queue if "rule_train" in line]
    assert len(job_ids) == 1, queue
    run("scontrol", "requeue", job_ids[0])
    return job_ids[0]
