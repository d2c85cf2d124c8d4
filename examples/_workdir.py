"""Shared by the container examples: a clean working directory and the stand-in images."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def enter(name: str, fresh: bool = True) -> Path:
    """cd into examples/work/<name> (emptied when ``fresh``), after building the images."""
    subprocess.run(["bash", str(EXAMPLES / "images" / "build.sh")], check=True)
    work = EXAMPLES / "work" / name
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    return work
