"""What produced a result: the code's commit, the versions and the hardware behind its numbers.

The same commit and config gave JPEG sizes a few bytes apart on two machines (README, "The toy
world"), and nothing on record said what differed. Benchmark records, results tables and
training checkpoints carry these so that the next such difference can be traced.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

#: Packages whose version can move a figure: the model's numerics, the sampler and the LoRA, the
#: statistics, and the JPEG encoder behind the compressibility proxies.
PACKAGES = (
    "torch",
    "diffusers",
    "peft",
    "accelerate",
    "transformers",
    "numpy",
    "scipy",
    "pandas",
    "pillow",
)


def git_commit() -> str:
    """The package checkout's commit (``+dirty`` with uncommitted changes), or 'unknown'."""
    folder = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Python's, each of PACKAGES' and the JPEG library's version ('absent' if not installed)."""
    import torch
    from PIL import features

    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "absent"
    found["torch"] = torch.__version__  # with its build (+cu130, +cpu), which metadata drops
    turbo = features.version("libjpeg_turbo")
    found["libjpeg"] = f"turbo {turbo}" if turbo else (features.version("jpg") or "absent")
    return found


def hardware() -> dict[str, str]:
    """The CPU with the instruction set torch's CPU kernels use (AVX2, AVX512, ...: kernels of
    another width round differently), and the GPU if one is visible."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    found = {"cpu": f"{model} ({torch.backends.cpu.get_cpu_capability()})"}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found


def provenance() -> dict[str, str]:
    """The commit, the versions and the hardware, as one flat mapping (for JSON)."""
    return {"commit": git_commit(), **versions(), **hardware()}


def provenance_line() -> str:
    """The commit, the versions and the hardware in one line, for the foot of a table."""
    return ", ".join(f"{name} {value}" for name, value in provenance().items())
