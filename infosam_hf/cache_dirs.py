"""Where infosam_hf caches files, and how a cached folder appears: whole, or not at all.

Shared by the synthetic data sets (`synthetic.py`) and the preprocessed-data cache
(`data/cache.py`), which would otherwise import each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def cache_home() -> Path:
    """`$INFOSAM_HF_CACHE`, default `~/.cache/infosam_hf`: each kind of cached data has a folder in it."""
    return Path(os.environ.get("INFOSAM_HF_CACHE") or Path.home() / ".cache" / "infosam_hf")


@contextmanager
def staged_folder(folder: Path, marker: str):
    """A temporary sibling of `folder` to write into, renamed to `folder` when the block ends without error.

    Readers only ever see a complete folder (one holding `marker`); when processes starting
    together (one per rank) build the same folder, the first finished copy wins and the
    others are dropped. Whatever happens, the temporary folder does not outlive the block.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield staging
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / marker).exists():  # not a finished copy from a concurrent process
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
