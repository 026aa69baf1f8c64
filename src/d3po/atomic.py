"""Write a file so that a reader sees the old content or the new, never a part."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def write_atomically(content: str | pd.DataFrame, out_path: Path) -> None:
    """Write ``content`` (text, or a DataFrame as CSV without its index) to a temporary file
    beside ``out_path``, then rename it over ``out_path`` (atomic on POSIX)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    if isinstance(content, pd.DataFrame):
        content.to_csv(tmp_path, index=False)
    else:
        tmp_path.write_text(content, encoding="utf-8")
    os.replace(tmp_path, out_path)
