"""Files and folders that appear whole or not at all: a job killed while it writes must not
leave a result that looks complete. Written under a temporary name next to the destination,
then renamed into place (``os.replace``, atomic on one file system)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


def write_atomically(content: str | pd.DataFrame, path: Path) -> None:
    """Write ``content`` (text, or a table as CSV without its index) to ``path`` atomically,
    creating the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(content, pd.DataFrame):
        content.to_csv(tmp_path, index=False)
    else:
        tmp_path.write_text(content, encoding="utf-8")
    os.replace(tmp_path, path)


@contextlib.contextmanager
def folder_atomically(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder (``OUT_DIR.partial``) that replaces ``out_dir`` when the
    block completes; on an error the staging folder is removed and ``out_dir`` is untouched."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed job
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
