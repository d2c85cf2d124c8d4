"""The Markdown blocks of BENCHMARKS.md, made from the results files.

    .venv/bin/python benchmarks/render.py benchmarks/results/core-2026-11-25-0912.json
    .venv/bin/python benchmarks/render.py --write BENCHMARKS.md [RESULTS_FILE ...]

The first form prints the block for one results file. The second replaces the
generated blocks of BENCHMARKS.md, which lie between

    <!-- begin generated: benchmarks/results/<file>.json -->
    <!-- end generated -->

Each RESULTS_FILE given replaces the block of the same benchmark (core,
containers, restore, miss, cluster, cli, lookups) and becomes the file it cites; without RESULTS_FILE every
block is rendered again from the file it already cites. Every figure in a block
is a value of its results file, formatted; check_published.py verifies that.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- begin generated: (?P<path>\S+\.json) -->\n(?P<body>.*?)<!-- end generated -->", re.S)
THIS, THEIRS = "consist (this)", "consist 0.3.5"
NA, X = "\N{EN DASH}", "\N{MULTIPLICATION SIGN}"


# ---------------------------------------------------------------------------- formatting


def ms(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 0.1:
        return f"{v:.2f} ms"
    return f"{v:.3f} ms"


def times(r: float) -> str:
    return f"{r:,.0f}{X}" if r >= 10 else f"{r:.2f}{X}"


def pct(v: float) -> str:
    return f"{v:+.1f} %"


def met(*checks: bool | None) -> str:
    if any(c is None for c in checks):
        return "n/a"
    return "yes" if all(checks) else "no"


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def size_label(mib: int) -> str:
    return f"{mib / 1024:.0f} GiB" if mib % 1024 == 0 else f"{mib:,} MiB"


def preamble(r: dict[str, Any], path: str) -> list[str]:
    mc = r["machine"]
    start, end = mc["load_average_at_start"][0], mc.get("load_average_at_end", ["?"])[0]
    took = f", taking {r['duration_s'] / 60:.0f} min" if "duration_s" in r else ""
    return [
        f"Reproduce: `{r['command']}`",
        "",
        f"Measured {r['date']}{took}, on {mc['cpu_count']} {X} {mc['cpu_model']}, {mc['memory_gib']} GiB, "
        f"{mc['os']}, Python {mc['python']}, work files on {mc['file_system']} "
        f"(1-minute load average {start} at the start, {end} at the end). "
        f"Every sample, with the machine facts: `{path}`.",
        "",
    ]


# ---------------------------------------------------------------------------- core


def core(r: dict[str, Any]) -> list[str]:
    m, t, p = r["measurements"], r["targets"], r["parameters"]
    up = "upstream" in m["miss"]

    def n(key: str, sub: str | None = None) -> str:
        def one(side: str) -> str:
            d = m[key][side]
            return str((d[sub] if sub else d)["n"])

        return f"{one('consist')} / {one('upstream') if up else NA}"

    def pair(key: str) -> tuple[str, str, str]:
        d = m[key]
        if not up:
            return ms(d["consist"]["median_ms"]), "not run", ""
        return ms(d["consist"]["median_ms"]), ms(d["upstream"]["median_ms"]), times(d["ratio_of_medians"])

    def speed_ok(key: str, minimum: float) -> bool | None:
        return m[key]["ratio_of_medians"] >= minimum if up else None

    db = m["db_runs"]["consist"]
    if up and m["db_runs"]["upstream"] != db:
        raise ValueError(f"the two databases hold different numbers of runs: {m['db_runs']}")
    size = size_label(p["file_mib"])
    tm, th = t["miss"], t["hit"]
    imp = m["import"]
    hs = m["hash"]

    def hash_cell(side: str) -> str:
        if side not in hs:
            return "not run"
        return f"{hs[side]['pct_of_hashlib']:.0f} % ({hs[side]['library_gb_per_s']:.2f} GB/s)"

    rows = [
        row("trivial `tracker.run` miss", n("miss"), *pair("miss"), f"≤ {tm['max_ms']} ms, ≥ {tm['min_speedup']}{X}",
            met(m["miss"]["consist"]["median_ms"] <= tm["max_ms"], speed_ok("miss", tm["min_speedup"]))),
        row("trivial `tracker.run` hit", n("hit"), *pair("hit"), f"≤ {th['max_ms']} ms, ≥ {th['min_speedup']}{X}",
            met(m["hit"]["consist"]["median_ms"] <= th["max_ms"], speed_ok("hit", th["min_speedup"]))),
        row(f"construct a `Tracker` on a database of {db:,} runs (this consist opens only its SQLite run index)",
            n("open"), *pair("open"), NA, NA),
        row(f"open a `Tracker` on a database of {db:,} runs, first query (`find_runs(limit=10)`), close",
            n("open_query"), *pair("open_query"), f"≤ {t['open_query']['max_ms']} ms",
            met(m["open_query"]["consist"]["median_ms"] <= t["open_query"]["max_ms"])),
        row(f"open a `Tracker` on a database of {db:,} runs, first hit, close", n("open_hit"), *pair("open_hit"),
            NA, NA),
        row("`import consist` (wall time over an empty interpreter)", n("import", "import"),
            ms(imp["consist"]["added_ms"]), ms(imp["upstream"]["added_ms"]) if up else "not run",
            times(imp["ratio_of_medians"]) if up else "", NA, NA),
        row(f"re-run (hit) with an unchanged {size} input", n("big_rerun"), *pair("big_rerun"), NA, NA),
        row(f"… time the {size} input adds to a hit (difference of medians)", n("big_rerun"),
            ms(m["big_added"]["consist"]["ms"]), ms(m["big_added"]["upstream"]["ms"]) if up else "not run", "",
            f"≤ {t['big_added']['max_ms']} ms", met(m["big_added"]["consist"]["ms"] <= t["big_added"]["max_ms"])),
        row(f"first hash of {size}, throughput relative to plain `hashlib.sha256`", n("hash", "library"),
            hash_cell("consist"), hash_cell("upstream"), "",
            f"≥ {t['hash']['min_pct_of_hashlib']} %",
            met(hs["consist"]["pct_of_hashlib"] >= t["hash"]["min_pct_of_hashlib"])),
    ]  # fmt: skip
    if "scale" in m:
        sc = m["scale"]
        big = f"{sc['runs_in_db']:,}"
        rows += [
            row(f"hit with {big} runs in the database", f"{sc['hit']['n']} / {NA}", ms(sc["hit"]["median_ms"]),
                "not measured", "", NA, NA),
            row(f"miss with {big} runs in the database", f"{sc['miss']['n']} / {NA}", ms(sc["miss"]["median_ms"]),
                "not measured", "", NA, NA),
            row(f"signature lookup alone, {big} runs", f"{sc['lookup_only']['n']} / {NA}",
                ms(sc["lookup_only"]["median_ms"]), "not measured", "", f"≤ {t['scale_lookup']['max_ms']} ms",
                met(sc["lookup_only"]["median_ms"] <= t["scale_lookup"]["max_ms"])),
        ]  # fmt: skip
    return [
        "N is the number of samples per library (this / 0.3.5). Rows measured on both ran in N rounds, each "
        "library once per round, alternating which went first.",
        "",
        row("measurement (median)", "N", THIS, THEIRS, "speed-up (ratio of medians)", "target", "met"),
        row(*["---"] * 7),
        *rows,
    ]


# ---------------------------------------------------------------------------- containers


def containers(r: dict[str, Any]) -> list[str]:
    m, t = r["measurements"], r["targets"]
    miss, hit = m["miss"], m["hit"]
    up = "upstream" in miss
    ov = miss["overhead_pct"]
    tov, th = t["miss_overhead"]["max_pct"], t["hit"]["max_ms"]

    def overhead(side: str) -> str:
        o = ov[side]
        return f"{pct(o['ratio_of_medians'])} of medians, {pct(o['median_paired_ratio'])} median of paired ratios"

    def hit_cell(d: dict[str, Any], side: str) -> str:
        return f"{ms(d[side]['median_ms'])}, {d['starts'][side]} container starts in {d[side]['n']} hits"

    n2 = f"{miss['consist']['n']} / {miss['upstream']['n'] if up else NA}"
    nh = f"{hit['consist']['n']} / {hit['upstream']['n'] if up else NA}"
    rows = [
        row("bare `docker run --rm` of the command", f"{miss['bare']['n']}", ms(miss["bare"]["median_ms"]), NA, NA,
            NA),
        row("`run_container` miss (Docker)", n2, ms(miss["consist"]["median_ms"]),
            ms(miss["upstream"]["median_ms"]) if up else "not run", NA, NA),
        row("… overhead of a miss over the bare run", n2, overhead("consist"),
            overhead("upstream") if up else "not run",
            f"≤ {tov} % (of medians)", met(ov["consist"]["ratio_of_medians"] <= tov)),
        row("`run_container` hit, one small output (Docker)", nh,
            hit_cell(hit, "consist"), hit_cell(hit, "upstream") if up else "not run", f"≤ {th} ms, no start",
            met(hit["consist"]["median_ms"] <= th, hit["starts"]["consist"] == t["hit"]["starts"])),
    ]  # fmt: skip
    if up:
        rows.append(row("… speed-up of the hit over 0.3.5 (ratio of medians)", f"{hit['rounds']} rounds",
                        times(hit["ratio_of_medians"]), "", NA, NA))  # fmt: skip
    for key, label in (("podman_hit", "`run_container` hit (Podman)"),
                       ("apptainer_hit", "`run_container` hit (Apptainer, .sif)")):  # fmt: skip
        if key in m:
            d = m[key]
            ok = met(d["consist"]["median_ms"] <= th, d["starts"]["consist"] == t["hit"]["starts"])
            rows.append(row(label, f"{d['consist']['n']} / {NA}", hit_cell(d, "consist"), "not measured",
                            f"≤ {th} ms, no start", ok))  # fmt: skip
        if key == "podman_hit" and "podman_first_hit" in m:
            d = m["podman_first_hit"]["consist"]
            rows.append(row("… the first hit in a new process (Podman)", f"{d['n']} / {NA}", ms(d["median_ms"]),
                            "not measured", NA, NA))  # fmt: skip
    return [
        "N is the number of samples per library (this / 0.3.5). The bare run and the two libraries' misses ran in "
        "N rounds, each once per round in rotating order; the Docker hits of the two libraries alternated which "
        "went first.",
        "",
        row("measurement (median)", "N", THIS, THEIRS if up else "the original (not run)", "target", "met"),
        row(*["---"] * 6),
        *rows,
    ]


# ---------------------------------------------------------------------------- restore


def restore(r: dict[str, Any]) -> list[str]:
    p = r["parameters"]
    rows = []
    for fs, cases in r["file_systems"].items():
        for name, d in cases.items():
            label = (f"one file of {size_label(p['size_mib'])}" if name == "big_file"
                     else f"{p['files']:,} files of {p['small_file_kib']:g} KiB")  # fmt: skip
            rows.append(row(fs, label, d["consist_hit"]["n"], ms(d["consist_hit"]["median_ms"]),
                            ms(d["cp_reflink_auto"]["median_ms"]), f"{d['ratio']:.2f}",
                            f"{d['paired_ratio_median']:.2f}"))  # fmt: skip
    return [
        "N pairs per case, each a consist hit and a `cp`, alternating which went first; ratios are consist / `cp`.",
        "",
        row(
            "file system",
            "output",
            "N pairs",
            "consist hit (restore)",
            "`cp --reflink=auto`",
            "ratio of medians",
            "median paired ratio",
        ),
        row(*["---"] * 7),
        *rows,
    ]


# ---------------------------------------------------------------------------- miss with many hits


def miss(r: dict[str, Any]) -> list[str]:
    m, t, p = r["measurements"], r["targets"], r["parameters"]
    hits = f"{p['hits']:,}"
    a, b, old = (m["miss"]["arms"][k] for k in ("no_hits", "hits", "hits_previous_index"))
    la, lb, lp = (m["lookup"]["arms"][k] for k in ("no_hits", "hits", "hits_previous_index"))
    ratio, flat = m["miss"]["ratio_of_medians"], t["flat"]["max_ratio"]
    rows = [
        row("trivial `tracker.run` miss, no hits recorded", a["n"], ms(a["median_ms"]), NA, NA),
        row(f"trivial `tracker.run` miss, {hits} hits of the same model recorded", b["n"], ms(b["median_ms"]),
            f"≤ {t['miss']['max_ms']} ms", met(b["median_ms"] <= t["miss"]["max_ms"])),
        row("… with hits / without (ratio of medians)", f"{m['miss']['rounds']} rounds", times(ratio), f"≤ {flat}",
            met(ratio <= flat)),
        row(f"… with {hits} hits, the lookup done as the previous schema did (reference)", old["n"],
            ms(old["median_ms"]), NA, NA),
        row("lookup of the newest executed runs alone (`recent_runs_of_model`), no hits", la["n"],
            ms(la["median_ms"]), NA, NA),
        row(f"… with {hits} hits", lb["n"], ms(lb["median_ms"]), NA, NA),
        row(f"… with {hits} hits, through the previous schema's index (`run_by_model`)", lp["n"],
            ms(lp["median_ms"]), NA, NA),
    ]  # fmt: skip
    return [
        "N is the number of samples. Each kind of call ran in N rounds, once on each of the three databases per "
        "round, in rotating order.",
        "",
        row("measurement (median)", "N", THIS, "target", "met"),
        row(*["---"] * 5),
        *rows,
    ]


# ---------------------------------------------------------------------------- PostgreSQL, Dask, writers


def cluster(r: dict[str, Any]) -> list[str]:
    m, t, p = r["measurements"], r["targets"], r["parameters"]
    rows = []
    for kind, target in (("miss", t["pg_miss"]), ("hit", t["pg_hit"])):
        d = m["run"][kind]
        pg, emb = d["postgresql"], d["embedded"]
        rows += [
            row(f"trivial `tracker.run` {kind}, PostgreSQL on localhost", pg["n"], ms(pg["median_ms"]),
                f"≤ {target['max_ms']} ms", met(pg["median_ms"] <= target["max_ms"])),
            row(f"trivial `tracker.run` {kind}, embedded store (SQLite index, DuckDB file)", emb["n"],
                ms(emb["median_ms"]), NA, NA),
            row("… PostgreSQL / embedded (ratio of medians)", f"{d['rounds']} rounds", times(d["ratio_of_medians"]),
                NA, NA),
        ]  # fmt: skip
    sw, n = m["sweep"], f"{p['sweep_rows']:,}"
    mi, ah = sw["misses"], sw["all_hits"]
    ts, th = t["sweep"], t["sweep_hits"]
    cluster_label = f"{p['dask_workers']} Dask worker processes ({p['threads_per_worker']} thread each)"
    rows += [
        row(f"bare `client.map` of the trivial function over {n} inputs ({mi['bare_dask_tasks']:,} tasks), gathered, "
            f"on {cluster_label}",
            mi["bare_dask"]["n"], ms(mi["bare_dask"]["median_ms"]), NA, NA),
        row(f"`map_runs` of {n} trivial steps, every row a miss, recording in PostgreSQL, same cluster "
            f"(at most {mi['map_runs_tasks_max']} tasks)", mi["map_runs"]["n"], ms(mi["map_runs"]["median_ms"]),
            NA, NA),
        row("… of which before its first task: every row's hit decided in the calling process",
            mi["map_runs_until_first_task"]["n"], ms(mi["map_runs_until_first_task"]["median_ms"]), NA, NA),
        row("… `map_runs` / bare Dask (ratio of medians)", f"{mi['rounds']} rounds", times(mi["ratio_of_medians"]),
            f"≤ {ts['max_ratio']}{X}", met(mi["ratio_of_medians"] <= ts["max_ratio"])),
        row("… time `map_runs` adds per row (difference of medians / rows)", f"{mi['rounds']} rounds",
            ms(mi["overhead_per_row_ms"]), NA, NA),
        row(f"`map_runs` of the same {n} rows again, every row a hit", ah["map_runs"]["n"],
            f"{ms(ah['map_runs']['median_ms'])}, {ah['submitted_max']} rows submitted",
            f"≤ {th['max_ms']} ms, {th['submitted']} submitted",
            met(ah["map_runs"]["median_ms"] <= th["max_ms"], ah["submitted_max"] == th["submitted"])),
    ]  # fmt: skip
    wr, k, per = m["writers"], p["writers"], p["runs_per_writer"]
    lo, hi, want = wr["completed_runs_min"], wr["completed_runs_max"], wr["expected_runs"]
    done = f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}"
    nr = f"{len(wr['rounds'])} round{'s' if len(wr['rounds']) != 1 else ''}"
    tw = t["writers"]
    rows += [
        row(f"{k} processes started together, {per} distinct trivial runs each, on one PostgreSQL database: "
            "completed runs in the `consist.run` view", nr,
            f"{done} of {want:,}, at most {wr['duplicates_max']} recorded twice",
            f"{tw['lost']} lost, {tw['duplicates']} twice", met(wr["lost_max"] == tw["lost"],
                                                                 wr["duplicates_max"] == tw["duplicates"])),
        row(f"… throughput: {want:,} runs / time from the common start to the end of the last writer", nr,
            f"{wr['runs_per_s_median']:,.0f} runs/s", NA, NA),
        row(f"… one `tracker.run` in a writer, {k} writing at once", wr["per_run_all"]["n"],
            ms(wr["per_run_all"]["median_ms"]), NA, NA),
    ]  # fmt: skip
    return [
        "N is the number of samples. The rows of a ratio ran in N rounds, each side once per round, alternating "
        "which went first.",
        "",
        row("measurement (median)", "N", "value", "target", "met"),
        row(*["---"] * 5),
        *rows,
    ]


def cli(r: dict[str, Any]) -> list[str]:
    m, t, p = r["measurements"], r["targets"], r["parameters"]
    small, large = f"{p['small_runs']:,}", f"{p['large_runs']:,}"
    rows = [
        row(f"`consist runs`, {small} runs, whole process", m["runs_10k"]["n"], ms(m["runs_10k"]["median_ms"]),
            f"≤ {t['runs_10k']['max_ms']} ms", met(m["runs_10k"]["median_ms"] <= t["runs_10k"]["max_ms"])),
        row(f"`consist runs --json --limit {p['json_limit']}`, {small} runs", m["runs_json_10k"]["n"],
            ms(m["runs_json_10k"]["median_ms"]), NA, NA),
        row(f"`consist runs`, {large} runs", m["runs_100k"]["n"], ms(m["runs_100k"]["median_ms"]), NA, NA),
        row(f"`consist runs --json --limit {p['json_limit']}`, {large} runs", m["runs_json_100k"]["n"],
            ms(m["runs_json_100k"]["median_ms"]), NA, NA),
        row(f"`consist ui`, runs page 1, {large} runs (HTTP)", m["ui_first_page_100k"]["n"],
            ms(m["ui_first_page_100k"]["median_ms"]), NA, NA),
        row(f"`consist ui`, page {m['ui_deep_page']} filtered by model, sorted, {large} runs",
            m["ui_deep_page_100k"]["n"],
            ms(m["ui_deep_page_100k"]["median_ms"]), NA, NA),
    ]  # fmt: skip
    return [
        "N is the number of samples; each command ran as a fresh process, from start to exit.",
        "",
        row("measurement (median)", "N", THIS, "target", "met"),
        row(*["---"] * 5),
        *rows,
    ]


def lookups(r: dict[str, Any]) -> list[str]:
    m, t, p, b = r["measurements"], r["targets"], r["parameters"], r["build"]
    rows = []
    for name, arm in m["arms"].items():
        targeted = name not in m["untargeted"]
        rows.append(row(f"`{m['calls'][name]}`", arm["n"], ms(arm["median_ms"]),
                        f"≤ {t['max_ms']:g} ms" if targeted else NA,
                        met(arm["median_ms"] <= t["max_ms"]) if targeted else NA))  # fmt: skip
    where = "a PostgreSQL database" if p["backend"] == "postgresql" else "the SQLite run index"
    return [
        f"{b['runs']:,} runs, {b['artifacts']:,} artifacts and {b['links']:,} links in {where} (schema version "
        f"{b['schema_version']}), written in {b['seconds']:g} s. N is the number of samples: every lookup ran once "
        f"per round, in {m['rounds']} rounds of rotating order, with other arguments each round.",
        "",
        row("lookup (median)", "N", THIS, "target", "met"),
        row(*["---"] * 5),
        *rows,
    ]


def calls(r: dict[str, Any]) -> list[str]:
    pc, pp, t = r["per_call"], r["per_process"], r["targets"]
    rows = []
    for kind in ("miss", "hit"):
        arms, ratio = pc[kind]["arms"], pc[kind]["ratio_consist_to_joblib"]
        rows.append(row(f"`tracker.run` {kind}, per call", arms["consist"]["n"], ms(arms["consist"]["median_ms"]),
                        ms(arms["joblib"]["median_ms"]), f"{ratio:.2f}{X}", f"≤ {t['ratio_to_joblib']:g}{X} joblib",
                        met(ratio <= t["ratio_to_joblib"])))  # fmt: skip
    bare = pc["miss"]["arms"]["bare"]
    rows.append(row("the function alone (no cache)", bare["n"], ms(bare["median_ms"]), NA, NA, NA, NA))
    arms = pp["arms"]
    rows.append(row("one-hit script, whole process", arms["consist"]["n"], ms(arms["consist"]["median_ms"]),
                    ms(arms["joblib"]["median_ms"]), NA, f"≤ {t['process_ms']:g} ms",
                    met(arms["consist"]["median_ms"] <= t["process_ms"])))  # fmt: skip
    rows.append(row("`python -c pass`, beside it", arms["python -c pass"]["n"],
                    ms(arms["python -c pass"]["median_ms"]), NA, NA, NA, NA))  # fmt: skip
    return [
        "N is the number of samples. Per call: one process, the two caches alternating which goes first each "
        "round; a miss is a new argument, a hit a repeated one. Per process: the three commands interleaved.",
        "",
        row("measurement (median)", "N", THIS, "joblib.Memory", "ratio", "target", "met"),
        row(*["---"] * 7),
        *rows,
    ]


def merge(r: dict[str, Any]) -> list[str]:
    p, t, m, o = r["parameters"], r["targets"], r["merge"], r["open only"]
    return [
        f"{p['runs']:,} pending runs ({p['per_transaction']} per transaction, each with an output and two links), "
        f"merged by a fresh process; N is the number of rounds, alternating with a process that only opens the "
        "same files (its peak memory is the floor: Python, consist and DuckDB loaded).",
        "",
        row("measurement", "N", THIS, "open only", "target", "met"),
        row(*["---"] * 6),
        row("merge, whole process (median)", m["seconds"]["n"], ms(m["seconds"]["median_ms"]),
            ms(o["seconds"]["median_ms"]), f"≤ {ms(t['max_ms'])}", met(m["seconds"]["median_ms"] <= t["max_ms"])),
        row("peak resident memory (largest)", m["seconds"]["n"], f"{r['peak_rss_mb_max']:.0f} MB",
            f"{max(o['peak_rss_mb']):.0f} MB", f"≤ {t['peak_rss_mb']:g} MB",
            met(r["peak_rss_mb_max"] <= t["peak_rss_mb"])),
    ]  # fmt: skip


def dirs(r: dict[str, Any]) -> list[str]:
    p, t = r["parameters"], r["targets"]
    rows = []
    for label, d in r["places"].items():
        arms = d["arms"]
        for arm, what in (("store", "store (a miss)"), ("restore", "restore (a hit)")):
            ratio = d[f"{arm}_ratio_of_medians"]
            rows.append(row(f"{label} ({d['file_system']})", what, arms[arm]["n"], ms(arms[arm]["median_ms"]),
                            ms(arms["cp -r"]["median_ms"]), times(ratio), times(d[f"{arm}_median_paired_ratio"]),
                            f"≤ {times(t[arm + '_ratio'])}", met(ratio <= t[arm + "_ratio"])))  # fmt: skip
    return [
        f"A directory of {p['files']:,} files of {p['kib']} KiB. N is the number of rounds: in each, `cp -r`, a "
        "miss that stores a new directory and a hit that restores one ran once each, in rotating order; "
        "ratios are consist / `cp -r` of the same round.",
        "",
        row("file system", "consist call", "N", THIS, "`cp -r`", "ratio of medians", "median paired ratio",
            "target", "met"),
        row(*["---"] * 9),
        *rows,
    ]  # fmt: skip


def growth(r: dict[str, Any]) -> list[str]:
    p, t, m, g, b = r["parameters"], r["targets"], r["measurements"], r["growth"], r["builds"]
    sizes = [str(n) for n in p["sizes"]]
    names = {
        "open": "open a `Tracker`, first query",
        "hit": "`tracker.run` hit",
        "miss": "`tracker.run` miss",
        "lookup": f"`find_runs(model=..., limit={p['lookup_limit']})`"
        if "lookup_limit" in p
        else "`find_runs(model=..., limit=...)`, as many runs at every size",
        "close": "close (merges the round's runs into DuckDB)",
    }
    rows = []
    for kind, name in names.items():
        target = kind != "close"
        rows.append(row(name, *(f"{ms(m[n][kind]['median_ms'])} ({m[n][kind]['n']})" for n in sizes),
                        times(g[kind]), f"≤ {times(t['growth'])}" if target else NA,
                        met(g[kind] <= t["growth"]) if target else NA))  # fmt: skip
    rows.append(row("run index on disk, per run", *(f"{b[n]['index_kb_per_run']:.2f} kB" for n in sizes),
                    NA, f"≤ {t['index_kb_per_run']:g} kB",
                    met(b[sizes[-1]]["index_kb_per_run"] <= t["index_kb_per_run"])))  # fmt: skip
    rows.append(row("DuckDB file, per run", *(f"{b[n]['duckdb_kb_per_run']:.2f} kB" for n in sizes), NA, NA, NA))
    return [
        f"Each cell is a median (number of samples). {p['rounds']} rounds; in each, every history took its turn in "
        f"rotating order, opening a tracker, then {p['per_round']} hits, {p['per_round']} misses and "
        f"{p['per_round']} lookups, then closing it. Growth is the median at {int(sizes[-1]):,} runs over the "
        f"median at {int(sizes[0]):,}.",
        "",
        row("measurement", *(f"{int(n):,} runs" for n in sizes), "growth", "target", "met"),
        row(*["---"] * (len(sizes) + 4)),
        *rows,
    ]


def sweep(r: dict[str, Any]) -> list[str]:
    p, t, m, o = r["parameters"], r["targets"], r["measurements"], r["overhead_ms_per_step"]
    bare = m["bare loop"]
    rows = [row("the bare loop", bare["n"], ms(bare["median_ms"]), NA, NA, NA)]
    for kind, name in (("miss", "map_runs, all misses"), ("hit", "map_runs, all hits")):
        target = t[f"{kind}_ms_per_step"]
        rows.append(row(f"`{name}`", m[name]["n"], ms(m[name]["median_ms"]), ms(o[kind]), f"≤ {ms(target)}",
                        met(o[kind] <= target)))  # fmt: skip
    return [
        f"A sweep of {p['steps']:,} steps, each writing one small file, in one process. N is the number of rounds; "
        "in each, with new rows, the bare loop and the sweep (its misses, then the same rows again, all hits) "
        "took turns going first. The overhead per step is the difference of medians divided by the steps.",
        "",
        row("measurement (median)", "N", THIS, "overhead per step", "target", "met"),
        row(*["---"] * 6),
        *rows,
    ]


RENDERERS = {"calls": calls, "dirs": dirs, "growth": growth, "sweep": sweep, "merge": merge, "cli": cli, "core": core,
             "containers": containers, "restore": restore, "miss": miss, "cluster": cluster,
             "lookups": lookups}  # fmt: skip


def render(result: dict[str, Any], path: str) -> str:
    """The generated block (without its marker lines) for a results file cited as `path`."""
    return "\n".join([*preamble(result, path), *RENDERERS[result["benchmark"]](result)]) + "\n"


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads((p if p.is_absolute() else ROOT / p).read_text())


def cited(path: str | Path) -> str:
    """How BENCHMARKS.md names a results file: relative to the repository root."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def rewrite(doc: str, new_files: list[str]) -> str:
    """doc with every generated block rendered again (from new_files where one is of the block's benchmark)."""
    by_kind = {load(f)["benchmark"]: cited(f) for f in new_files}

    def sub(match: re.Match[str]) -> str:
        old = match["path"]
        kind = load(old)["benchmark"] if (ROOT / old).exists() else Path(old).name.split("-")[0]
        path = by_kind.pop(kind, old)
        return f"<!-- begin generated: {path} -->\n{render(load(path), path)}<!-- end generated -->"

    out = BLOCK.sub(sub, doc)
    if by_kind:
        raise SystemExit(f"no generated block for: {', '.join(by_kind.values())}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", metavar="MARKDOWN", help="replace the generated blocks of this file")
    ap.add_argument("files", nargs="*", help="results files")
    args = ap.parse_args()
    if args.write:
        doc = Path(args.write)
        doc.write_text(rewrite(doc.read_text(), args.files))
        print(f"rewrote {doc}", file=sys.stderr)
        return
    if not args.files:
        ap.error("give a results file, or --write BENCHMARKS.md")
    for f in args.files:
        print(render(load(f), cited(f)))


if __name__ == "__main__":
    main()
