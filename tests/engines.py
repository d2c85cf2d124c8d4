"""Which real engines the tests can use: container engines (set up by scripts/setup-containers.sh),
PostgreSQL and Slurm (set up by scripts/setup-scaleout.sh).

``pytest --require-engines=all`` (what ``scripts/test.sh`` passes as root) makes
the engines mandatory: the run stops before any test if one is missing, naming
it, and a container test that cannot find its engine fails instead of skipping.
The setting lives in pytest's own configuration, not in the environment, so no
fixture can erase it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ENGINES = ("docker", "podman", "apptainer", "postgres", "slurm", "chromium")
ENV_FILE = Path(os.environ.get("CI_CONTAINERS_DIR", "/tmp/ci-containers")) / "containers.env"

# Filled in by conftest.pytest_configure from --require-engines.
REQUIRED: set[str] = set()


def parse_required(value: str) -> set[str]:
    """``"all"`` or a comma-separated list of engine names."""
    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    if "all" in names:
        return set(ENGINES)
    unknown = names - set(ENGINES)
    if unknown:
        raise pytest.UsageError(f"--require-engines: unknown engine(s) {sorted(unknown)}; use {', '.join(ENGINES)}")
    return names


@functools.cache
def facts() -> dict[str, str]:
    """KEY=VALUE lines the set-up script wrote (image names, IDs, registry digests, SIF paths)."""
    out: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


@functools.cache
def problem(engine: str) -> str | None:
    """Why ``engine`` cannot be used by the tests, or None when it can."""
    if engine == "chromium":  # Debian's chromium, which Playwright drives (scripts/test.sh installs it)
        if not Path("/usr/bin/chromium").is_file():
            return "chromium: /usr/bin/chromium is missing (apt-get install chromium)"
        if not (Path(__file__).resolve().parent.parent / "src/consist/ui/static/vendor/cytoscape.min.js").is_file():
            return "chromium: the web view's libraries are missing (run scripts/vendor-ui.py)"
        return None
    if engine in ("postgres", "slurm"):  # set up by scripts/setup-scaleout.sh
        import scaleout

        return scaleout.pg_available() if engine == "postgres" else scaleout.slurm_available()
    exe = {"docker": "docker", "podman": "podman", "apptainer": "apptainer"}[engine]
    if shutil.which(exe) is None:
        return f"{engine}: the `{exe}` command is not on PATH"
    probe = {"docker": ["docker", "info"], "podman": ["podman", "info"], "apptainer": ["apptainer", "--version"]}
    try:
        proc = subprocess.run(probe[engine], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"{engine}: `{' '.join(probe[engine])}` did not answer within 60 s"
    except OSError as exc:
        return f"{engine}: `{' '.join(probe[engine])}` could not start ({exc})"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{engine}: `{' '.join(probe[engine])}` failed ({detail[0][:200]})"
    key = {"docker": "CI_DOCKER", "podman": "CI_PODMAN", "apptainer": "CI_APPTAINER"}[engine]
    if facts().get(key) != "1":
        return f"{engine}: its test images are not set up ({ENV_FILE} has no {key}=1)"
    return None


def available(engine: str) -> bool:
    return problem(engine) is None


def need(engine: str) -> None:
    """Skip without the engine, or fail when the run requires it."""
    why = problem(engine)
    if why is None:
        return
    script = "setup-scaleout.sh" if engine in ("postgres", "slurm") else "setup-containers.sh"
    msg = f"{why} (run scripts/{script})"
    if engine in REQUIRED:
        pytest.fail(f"required engine missing: {msg}", pytrace=False)
    pytest.skip(msg)


def image(engine: str, name: str = "busybox") -> str:
    f = facts()
    if engine == "apptainer":
        return f[f"CI_SIF_{name.upper()}"]
    return f[f"CI_IMAGE_{name.upper()}"]
