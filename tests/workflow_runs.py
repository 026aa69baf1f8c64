"""Running the whole workflow in a copy under a temporary folder (the end-to-end tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(workdir: Path) -> Path:
    """Copy the Snakefile, workflow/ and config/ into ``workdir``."""
    for part in ("Snakefile", "workflow", "config"):
        source = REPO / part
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, workdir / part)
    return workdir


def run_workflow(workdir: Path, config_file: str, timeout: int = 2400) -> list[str]:
    """Run every job of ``config_file`` alone (no target: `all`); on failure, fail the test with
    the output and the job logs. Returns the command, for a follow-up (--summary, --report)."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", config_file]
    command.append("--replace-workflow-config")
    result = subprocess.run(
        command, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        logs = "\n".join(
            f"--- {log}\n{log.read_text()[-3000:]}" for log in workdir.glob("*/logs/**/*.log")
        )
        pytest.fail(f"snakemake failed:\n{result.stdout}\n{result.stderr[-6000:]}\n{logs}")
    return command


def workflow_env() -> dict[str, str]:
    """This environment with this venv first on the PATH, so that rules find `d3po`."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
