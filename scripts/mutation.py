"""Mutation testing of the modules that carry the cache and restore guarantees.

Usage (from the repository root, with the test dependencies and mutmut installed):

    .venv/bin/python -m pip install mutmut==3.8.1
    .venv/bin/python scripts/mutation.py            # fresh run, then the report
    .venv/bin/python scripts/mutation.py --report   # report on the last run only

mutmut is configured under ``[tool.mutmut]`` in pyproject.toml (which files it
mutates, which tests it runs). This script picks the mutants in scope: every
function of hashing, identity, objects, dirstore, store/index, store/sqlite, store/duck,
inflight, locations, restoring and containers/mounts, and the functions of tracker.py, planning.py, recording.py and
integrations/containers.py that decide identity, hits, restores, storage and
mounts. It prints one table row per module and every mutant that was not killed.
See docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SEP = "ǁ"  # mutmut's separator between class and method in mutant names

# module -> functions in scope (None: the whole module). Methods are "Class.method".
SCOPE: dict[str, list[str] | None] = {
    "consist.hashing": None,
    "consist.identity": None,
    "consist.objects": None,
    "consist.dirstore": None,
    # The run index (its shared logic and the embedded backend) and the DuckDB mirror.
    "consist.store.index": None,
    "consist.store.sqlite": None,
    "consist.store.duck": None,
    "consist.store.csvload": None,
    "consist.inflight": None,
    # The tracker's cache decisions and restores, split over four modules.
    "consist.tracker": [
        "Tracker._plan", "Tracker._canonical_config", "Tracker._hasher", "Tracker._explain", "Tracker._run_step",
        "_recorded_items",
    ],
    "consist.planning": ["driver_for", "_ReadOnlyMemo.memo_get", "normalize_inputs", "_input_path"],
    "consist.restoring": None,
    "consist.recording": [
        "RecordingMixin._new_row", "RecordingMixin._open", "RecordingMixin._link_inputs",
        "RecordingMixin._store_output", "RecordingMixin._link_members", "RecordingMixin._finish",
        "RecordingMixin._record_hit", "_plain_row", "_member_rows", "RecordingMixin._open_if",
        "RecordingMixin._store_again_if_pruned", "_changed",
    ],
    # Storing an output: leased, or (tracker.run) looked at again after the run's record.
    "consist.queries": [
        "MaintenanceMixin._store_leased", "MaintenanceMixin._store_object", "MaintenanceMixin._holds_stored",
    ],
    "consist.locations": None,
    "consist.integrations.containers": [
        "plan_mounts", "plan_outputs", "_command", "environment_hash", "_env_key", "_allowed_roots",
    ],
    "consist.containers.mounts": None,
}  # fmt: skip


def mangled(module: str, function: str) -> str:
    if "." in function:
        cls, meth = function.split(".")
        return f"{module}.x{SEP}{cls}{SEP}{meth}"
    return f"{module}.x_{function}"


def patterns(modules: list[str] | None = None) -> list[str]:
    out = []
    for module, functions in SCOPE.items():
        if modules and module.removeprefix("consist.") not in modules:
            continue
        if functions is None:
            out.append(f"{module}.*")
        else:
            out += [f"{mangled(module, f)}__mutmut_*" for f in functions]
    return out


def patterns_of(functions: list[str]) -> list[str]:
    """mutmut name patterns of ``module:function`` items (``objects:ObjectStore.put_dir``)."""
    return [f"{mangled('consist.' + m, f)}__mutmut_*" for m, _, f in (x.partition(":") for x in functions)]


def name_prefixes(functions: list[str]) -> tuple[str, ...]:
    """The prefixes of the mutant names of these ``module:function`` items."""
    return tuple(n.removesuffix("*") for n in patterns_of(functions))


def in_scope(key: str) -> str | None:
    for module, functions in SCOPE.items():
        if functions is None and key.startswith(module + ".x"):
            return module
        if functions is not None and any(key.startswith(mangled(module, f) + "__mutmut_") for f in functions):
            return module
    return None


def results() -> dict[str, dict[str, str]]:
    """module -> mutant name -> status, read from mutmut's result files."""
    from mutmut.stats import status_by_exit_code

    by_module: dict[str, dict[str, str]] = {m: {} for m in SCOPE}
    for meta in (ROOT / "mutants" / "src").rglob("*.py.meta"):
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            module = in_scope(key)
            if module is not None:
                by_module[module][key] = status_by_exit_code[code]
    return by_module


def report(functions: list[str] | None = None) -> int:
    by_module = results()
    if functions:  # only the mutants of these functions
        wanted = name_prefixes(functions)
        by_module = {m: {k: v for k, v in st.items() if k.startswith(wanted)} for m, st in by_module.items()}
        by_module = {m: st for m, st in by_module.items() if st}
    print("| module | mutants | killed | survived | timeout | other | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 100.0
    for module, statuses in by_module.items():
        c = Counter(statuses.values())
        total = len(statuses)
        if c["not checked"] == total:
            continue  # outside this run (--modules)
        other = total - c["killed"] - c["survived"] - c["timeout"]
        score = 100.0 * (c["killed"] + c["timeout"]) / total if total else 0.0
        worst = min(worst, score)
        name = module.removeprefix("consist.").replace(".", "/") + ".py"
        print(f"| {name} | {total} | {c['killed']} | {c['survived']} | {c['timeout']} | {other} | {score:.1f} % |")
    print("\nNot killed:")
    for statuses in by_module.values():
        for key, status in sorted(statuses.items()):
            if status != "killed":
                print(f"  {status.replace(' ', '-'):12} {key}")
    return 0 if worst >= 90.0 else 1


class Mutant(NamedTuple):
    """A mutant not killed, as the classification sees it."""

    key: str
    module: str  # "store.duck"
    function: str  # "DuckStore._merge", "_flush"
    number: int
    status: str
    original: str  # the changed lines, cut at 90 characters
    mutated: str


def describe(key: str, status: str) -> Mutant:
    """A mutant's function, number, original and mutated lines, from mutmut's diff."""
    from mutmut.__main__ import find_mutant
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(key, path=find_mutant(key).path).splitlines()[2:]
    old = [line[1:].strip() for line in diff if line.startswith("-")]
    new = [line[1:].strip() for line in diff if line.startswith("+")]
    module, _, rest = key.removeprefix("consist.").partition(".x")
    name, _, number = rest.rpartition("__mutmut_")
    name = name.lstrip("_").replace(SEP, ".").strip(".") if SEP in name else name.removeprefix("_")

    def cut(lines: list[str]) -> str:
        text = " / ".join(lines) or "(line removed)"
        return text if len(text) <= 90 else text[:90]

    return Mutant(key, module, name, int(number), status, cut(old), cut(new))


def not_killed(
    by_module: dict[str, dict[str, str]], functions: list[str] | None, modules: list[str] | None
) -> dict[str, list[Mutant]]:
    """module -> its mutants not killed (of ``results()``), in function and number order."""
    os.chdir(ROOT)  # mutmut reads mutants/ relative to the working folder
    wanted = name_prefixes(functions) if functions else ()
    out: dict[str, list[Mutant]] = {}
    for module, statuses in by_module.items():
        if modules and module.removeprefix("consist.") not in modules:
            continue
        found = [describe(k, v) for k, v in statuses.items() if v != "killed" and (not wanted or k.startswith(wanted))]
        out[module] = sorted(found, key=lambda m: (m.function, m.number))
    return out


def reason_for(m: Mutant) -> str:
    """Why a mutant was not killed, from scripts/mutation_reasons.py ("unclassified" when it says nothing)."""
    from mutation_reasons import REASONS

    if m.status == "timeout":
        return "detected: the tests hung until mutmut's time limit"
    fn = m.function.lstrip("_")
    for key in ((m.module, fn, m.original, m.mutated), (m.module, fn, m.original)):
        if key in REASONS:
            return REASONS[key]
    return "unclassified"


def details(functions: list[str] | None, modules: list[str] | None) -> None:
    """Print every mutant in scope that was not killed, one line each, with its reason when one is known."""
    for module, mutants in not_killed(results(), functions, modules).items():
        if mutants:
            print(f"\n### {module.removeprefix('consist.')}\n")
        for m in mutants:
            print(f"- `{m.function}` #{m.number} ({m.status}): `{m.original}` → `{m.mutated}`: {reason_for(m)}")


def classify(modules: list[str] | None = None) -> int:
    """The table and every mutant not killed, grouped by reason, as Markdown; 1 if any is unclassified."""
    by_module = results()
    listed = not_killed(by_module, None, modules)
    rows, sections, unclassified = [], [], 0
    for module, statuses in by_module.items():
        if module not in listed:
            continue
        c = Counter(statuses.values())
        total = len(statuses)
        if not total or c["not checked"] == total:
            continue
        groups: dict[str, list[Mutant]] = {}
        for m in listed[module]:
            groups.setdefault(reason_for(m), []).append(m)
        equivalent = sum(len(ms) for r, ms in groups.items() if r.startswith("equivalent"))
        gaps = sum(len(ms) for r, ms in groups.items() if r.startswith("gap"))
        by_hand = sum(len(ms) for r, ms in groups.items() if r.startswith("killed"))
        unclassified += len(groups.get("unclassified", []))
        detected = c["killed"] + c["timeout"]
        name = module.removeprefix("consist.").replace(".", "/") + ".py"
        rows.append(
            f"| {name} | {total} | {c['killed']} | {c['survived']} | {c['timeout']} | "
            f"{total - c['killed'] - c['survived'] - c['timeout']} | {100 * detected / total:.1f} % | "
            f"{equivalent} | {by_hand} | {gaps} | {100 * (detected + by_hand) / max(1, total - equivalent):.1f} % |"
        )
        sections.append(f"\n### {name}\n")
        order = sorted(groups, key=lambda r: (not r.startswith("gap"), r.startswith(("detected", "killed")), r))
        for reason in order:
            ms = groups[reason]
            sections.append(f"- **{reason}** ({len(ms)}):")
            sections += [f"  - `{m.function}` #{m.number}: `{m.original}` → `{m.mutated}`" for m in ms]
    print(
        "| module | mutants | killed | survived | timeout | other | score "
        "| equivalent | killed by hand | gaps | score without equivalents |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\n".join(sections))
    return 1 if unclassified else 0


def pending(modules: list[str] | None) -> list[str]:
    """The mutants in scope that no run has killed yet, after mutmut brought mutants/ up to date.

    mutmut regenerates the mutants of changed functions (their verdicts reset) and collects
    coverage for new tests when it starts; naming one already-killed mutant makes it do only that.
    """
    by_module = results()
    killed = [k for statuses in by_module.values() for k, v in statuses.items() if v == "killed"]
    if killed:  # update mutants/ (changed code, new tests) at the cost of one mutant
        subprocess.run([sys.executable, "-m", "mutmut", "run", killed[0]], cwd=ROOT, check=False)
    out = []
    for module, statuses in results().items():
        if modules and module.removeprefix("consist.") not in modules:
            continue
        out += sorted(k for k, v in statuses.items() if v != "killed")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="only report on the last run")
    parser.add_argument("--keep", action="store_true", help="keep mutants/ from an earlier run (reuses results)")
    parser.add_argument(
        "--modules",
        nargs="+",
        metavar="MODULE",
        help="only these modules of the scope, e.g. store.index recording (re-measuring what changed)",
    )
    parser.add_argument(
        "--pending",
        action="store_true",
        help="keep mutants/ and run only the mutants in scope not killed yet (new, changed, survived, "
        "timed out): after adding tests or changing code, the rest of an earlier run's verdicts stand",
    )
    parser.add_argument(
        "--functions",
        nargs="+",
        metavar="MODULE:FUNCTION",
        help="only the mutants of these functions, e.g. objects:ObjectStore.put_dir hashing:walk_unfollowed "
        "(with --pending: those not killed yet); for re-measuring the functions a change touched",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="print every mutant not killed (function, number, original and mutated line), for classifying them",
    )
    parser.add_argument(
        "--classify",
        action="store_true",
        help="print the per-module table and every mutant not killed, grouped by the reason "
        "scripts/mutation_reasons.py gives (the body of docs/mutation-results.md)",
    )
    parser.add_argument("--max-children", type=int, default=None, help="parallel workers (default: CPU count)")
    args = parser.parse_args()
    if args.details:
        details(args.functions, args.modules)
        return 0
    if args.classify:
        return classify(args.modules)
    if not args.report:
        if not args.keep and not args.pending and not args.functions:  # --functions keeps the other verdicts
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        names = patterns(args.modules)
        if args.functions:
            names = patterns_of(args.functions)
        if args.pending:
            names = pending(args.modules)
            if args.functions:
                wanted = name_prefixes(args.functions)
                names = [n for n in names if n.startswith(wanted)]
            print(f"{len(names)} mutants to run", flush=True)
            if not names:
                return report(args.functions)
        cmd = [sys.executable, "-m", "mutmut", "run", *names]
        if args.max_children:
            cmd[4:4] = ["--max-children", str(args.max_children)]
        started = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, check=False)
        print(f"\nmutation run took {(time.monotonic() - started) / 60:.1f} min\n")
    return report(args.functions)


if __name__ == "__main__":
    sys.exit(main())
