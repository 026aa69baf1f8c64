"""d3po.provenance: the commit and versions a figure was made with, read here independently."""

from __future__ import annotations

import subprocess
from pathlib import Path

import diffusers
import PIL
import pytest
import torch

from d3po import provenance


def test_versions_are_those_of_the_imported_packages():
    found = provenance.versions()
    assert found["torch"] == torch.__version__
    assert found["diffusers"] == diffusers.__version__
    assert found["pillow"] == PIL.__version__
    assert found["libjpeg"] != "absent"  # the JPEG proxies' encoder


def test_a_package_that_is_not_installed_is_named_absent(monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGES", ("no-such-package-d3po",))
    assert provenance.versions()["no-such-package-d3po"] == "absent"


def test_the_commit_is_the_checkout_head():
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(provenance.__file__).parent,
        capture_output=True,
        text=True,
    )
    if head.returncode:
        pytest.skip("the package is not in a git checkout")
    assert provenance.git_commit().removesuffix("+dirty") == head.stdout.strip()
    assert provenance.provenance_line().startswith(f"commit {head.stdout.strip()}")


def test_the_hardware_names_the_cpu_kernels_torch_uses():
    cpu = provenance.hardware()["cpu"]
    assert cpu.endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    assert ("gpu" in provenance.hardware()) == torch.cuda.is_available()
    assert f", cpu {cpu}" in provenance.provenance_line()
