"""Which real container engines the tests can use (set up by scripts/setup-containers.sh)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ENV_FILE = Path(os.environ.get("CI_CONTAINERS_DIR", "/tmp/ci-containers")) / "containers.env"


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
def available(engine: str) -> bool:
    exe = {"docker": "docker", "podman": "podman", "apptainer": "apptainer"}[engine]
    if shutil.which(exe) is None:
        return False
    probe = {"docker": ["docker", "info"], "podman": ["podman", "info"], "apptainer": ["apptainer", "--version"]}
    try:
        return subprocess.run(probe[engine], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def need(engine: str) -> None:
    """Skip without the engine, unless CI demands every engine (then fail loudly)."""
    if available(engine) and facts():
        return
    msg = f"{engine} is not set up (run scripts/setup-containers.sh)"
    if os.environ.get("CONSIST_REQUIRE_ENGINES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def image(engine: str, name: str = "busybox") -> str:
    f = facts()
    if engine == "apptainer":
        return f[f"CI_SIF_{name.upper()}"]
    return f[f"CI_IMAGE_{name.upper()}"]
