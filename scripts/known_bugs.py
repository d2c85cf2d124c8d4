"""Put each known bug back into a copy of the source and check that the tests catch it.

Each entry is a bug an earlier version of the suite let through. For each, the
source and tests are copied to a scratch directory, the one change is applied,
and the relevant test files run against the copy (PYTHONPATH puts it first)
with every engine required. A bug that leaves the tests green is reported and
the script exits 1.

Usage: .venv/bin/python scripts/known_bugs.py [substring of a bug name ...]
Needs the engines (scripts/setup-containers.sh); takes about five minutes.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUGS = {
    "deny list off": (
        "src/consist/containers/mounts.py",
        "    hit = hit or any(_under(path, d) or _under(d, path) for d in denied)\n",
        "",
        ["tests/test_containers.py"],
    ),
    "secret on the command line (docker/podman)": (
        "src/consist/containers/oci.py",
        'cmd += ["--env-file", launch.pipe(body.encode())]',
        'cmd += [a for k, v in sorted(spec.environment.items()) for a in ("--env", f"{k}={v}")]',
        ["tests/test_containers.py"],
    ),
    "secret on the command line (apptainer)": (
        "src/consist/containers/apptainer.py",
        '            cmd += ["--pwd", workdir]\n',
        '            cmd += ["--pwd", workdir]\n'
        '        for k, v in spec.environment.items():\n            cmd += ["--env", f"{k}={v}"]\n',
        ["tests/test_containers.py"],
    ),
    "bulk merge drops a row": (
        "src/consist/store.py",
        "columns = list(zip(*rows))",
        "columns = list(zip(*rows[1:]))",
        ["tests/test_queries.py", "tests/test_concurrency.py"],
    ),
    "failed runs accepted as producers": (
        "src/consist/index.py",
        "WHERE signature = ? AND status = 'completed' AND cache_hit = 0",
        "WHERE signature = ? AND cache_hit = 0",
        ["tests/test_execution.py", "tests/test_queries.py"],
    ),
    "pull_latest ignored": (
        "src/consist/integrations/containers.py",
        "ref = backend.resolve(image, pull_latest=pull_latest)",
        "ref = backend.resolve(image, pull_latest=False)",
        ["tests/test_containers.py"],
    ),
    "run_as_user ignored": (
        "src/consist/integrations/containers.py",
        "    user = _container_user(run_as_user, backend.name)\n",
        "    user = _container_user(run_as_user, backend.name)\n    user = None\n",
        ["tests/test_containers.py"],
    ),
    "no progress bar while hashing": (
        "src/consist/progress.py",
        '        self._enabled = self._mode != "off"\n',
        "        self._enabled = False\n",
        ["tests/test_hashing.py"],
    ),
}
only = sys.argv[1:]
results = {}
scratch = Path(tempfile.mkdtemp(prefix="consist-known-bugs-"))
scratch.chmod(0o755)  # a test runs the copy as another user (uid 65534)
for name, (rel, old, new, tests) in BUGS.items():
    if only and not any(o in name for o in only):
        continue
    work = scratch / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "src", work / "src")
    shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    f = work / rel
    text = f.read_text()
    assert text.count(old) == 1, f"{name}: pattern not found once in {rel}"
    f.write_text(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(work / "src")}
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--require-engines=all",
            *tests,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED") or " passed" in ln or " failed" in ln]
    results[name] = (proc.returncode, summary)
    print(f"== {name}: exit {proc.returncode}", *summary, sep="\n   ", flush=True)

shutil.rmtree(scratch, ignore_errors=True)
survivors = [name for name, (code, _) in results.items() if code == 0]
print(
    f"{len(results) - len(survivors)} of {len(results)} bugs caught"
    + (f"; NOT caught: {survivors}" if survivors else "")
)
sys.exit(1 if survivors else 0)
