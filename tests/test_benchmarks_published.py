"""The published benchmark tables agree with the results files committed beside them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_published_figure_comes_from_a_committed_results_file() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "check_published.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
