"""The ``consist`` command: look at recorded runs from a terminal.

Every command reads the run index read-only (see :mod:`consist.cli.data`), except
``verify --drop`` and ``gc``, which say so. ``--json`` prints stable field names
for scripts (documented in docs/cli.md). Exit codes: 0 done, 1 not found (a run,
scenario or artifact), 2 usage (a bad option, no database found, an unreadable
database).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from . import data

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Look at what consist recorded: runs, scenarios, why a step re-ran, lineage, differences.",
)  # fmt: skip

Db = Annotated[str | None, typer.Option("--db", help="The DuckDB file trackers use (its run index is read).")]
DbUrl = Annotated[str | None, typer.Option("--db-url", help="A PostgreSQL database: postgresql://user@host/db.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (stable field names) instead of a table.")]


def _show_version(value: bool) -> None:
    if value:
        import consist

        typer.echo(f"consist {consist.__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Look at what consist recorded: runs, scenarios, why a step re-ran, lineage, differences."""


def _console() -> Any:
    from rich.console import Console

    # Piped into a file or another program, lines are not cut at 80 columns.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _emit(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _open(db: str | None, db_url: str | None) -> tuple[Any, Path | None]:
    from ..errors import ConsistError

    try:
        return data.open_index(db, db_url)
    except ConsistError as exc:
        typer.echo(f"consist: {exc}", err=True)
        raise typer.Exit(2) from None


def _run_or_exit(index: Any, run_id: str) -> dict[str, Any]:
    try:
        return data.get_run(index, run_id)
    except data.NotFound as exc:
        typer.echo(f"consist: {exc}", err=True)
        raise typer.Exit(1) from None


def _short(h: str | None) -> str:
    return (h or "")[7:19] if h and h.startswith("sha256:") else (h or "")


def _when(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


@app.command()
def runs(
    db: Db = None,
    db_url: DbUrl = None,
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    status: Annotated[str | None, typer.Option(help="running, completed, failed or interrupted.")] = None,
    scenario: Annotated[str | None, typer.Option(help="Only the steps of this scenario.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only runs with this tag (repeat for all of several).")] = None,
    year: Annotated[int | None, typer.Option(help="Only runs of this year.")] = None,
    since: Annotated[str | None, typer.Option(help="Started within (2d, 12h) or since a date (2026-11-01).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first (0: all).")] = 50,
    as_json: Json = False,
) -> None:
    """The newest runs."""
    index, _ = _open(db, db_url)
    from ..errors import ConsistError

    try:
        since_at = data.since_epoch(since) if since else None
    except ConsistError as exc:
        typer.echo(f"consist: {exc}", err=True)
        raise typer.Exit(2) from None
    rows = data.list_runs(index, model=model, status=status, scenario=scenario, tags=tag or (), year=year,
                          since=since_at, limit=limit or None)  # fmt: skip
    records = [data.run_record(r) for r in rows]
    if as_json:
        _emit(records)
        return
    _print_table(
        ("run", "model", "status", "cache", "year", "started (UTC)", "duration"),
        ((r["id"], r["model"] or "", r["status"] or "",
          f"hit of {r['cache_source']}" if r["cache_hit"] else "executed", str(r["year"] or ""),
          _when(r["started_at"]), f"{r['duration_s']:.2f} s" if r["duration_s"] is not None else "")
         for r in records),
    )  # fmt: skip
    if not records:
        typer.echo("no runs match", err=True)


@app.command()
def show(run_id: str, db: Db = None, db_url: DbUrl = None, as_json: Json = False) -> None:
    """One run: identity, config, inputs, outputs, timings and its log's last lines."""
    index, _ = _open(db, db_url)
    row = _run_or_exit(index, run_id)
    record = data.run_record(row)
    log = data.log_path(row)
    full = {
        "run": record,
        "identity": data.loads(row.get("identity")),
        "config": data.loads(row.get("config")),
        "inputs": [data.artifact_record(a) for a in index.links_of(run_id, "input")],
        "outputs": [data.artifact_record(a) for a in index.links_of(run_id, "output")],
        "error": row.get("error"),
        "miss_explanation": (data.loads(row.get("meta")) or {}).get("cache_miss_explanation"),
        "meta": {k: v for k, v in (data.loads(row.get("meta")) or {}).items() if k != "cache_miss_explanation"},
        "log_tail": data.tail(log) if log else [],
    }
    if as_json:
        _emit(full)
        return
    con = _console()
    con.print(f"[bold]{record['id']}[/bold]  model {record['model']}  {record['status']}"
              + (f"  (cache hit of {record['cache_source']})" if record["cache_hit"] else "  (executed)"))  # fmt: skip
    con.print(f"started {_when(record['started_at'])} UTC, took {record['duration_s']} s; "
              f"signature {_short(record['signature'])}")  # fmt: skip
    if full["error"]:
        con.print(f"[red]error:[/red] {full['error']}")
    if full["meta"]:
        con.print("[bold]metadata[/bold]")
        for key, value in sorted(full["meta"].items()):
            con.print(f"  {key}: {value if isinstance(value, str) else json.dumps(value, default=str)}", markup=False)
    ident = full["identity"] or {}
    con.print("[bold]identity[/bold]")
    for key in sorted(ident):
        value = ident[key]
        con.print(f"  {key}: {_short(value) if isinstance(value, str) else json.dumps(value, default=str)}")
    con.print("[bold]config[/bold]")
    for key, value in sorted(data.flatten(full["config"] or {}).items()):
        con.print(f"  {key} = {json.dumps(value, default=str)}")
    for label in ("inputs", "outputs"):
        con.print(f"[bold]{label}[/bold]")
        for a in full[label]:
            con.print(f"  {a['key']}: {a['path']}  {_short(a['hash'])}  {a['size'] if a['size'] is not None else ''}")
    if full["log_tail"]:
        con.print(f"[bold]log[/bold] ({log})")
        for line in full["log_tail"]:
            con.print(f"  {line}", markup=False)


@app.command()
def artifacts(run_id: str, db: Db = None, db_url: DbUrl = None, as_json: Json = False) -> None:
    """What a run read and wrote (inputs, outputs, logs, the files of directory outputs)."""
    index, _ = _open(db, db_url)
    _run_or_exit(index, run_id)
    records = [data.artifact_record(a) for a in index.links_of(run_id)]
    if as_json:
        _emit(records)
        return
    _print_table(
        ("direction", "key", "kind", "size", "hash", "path"),
        ((a["direction"], a["key"], a["kind"] or "", str(a["size"] if a["size"] is not None else ""),
          _short(a["hash"]), a["path"] or "") for a in records),
    )  # fmt: skip


@app.command()
def scenarios(db: Db = None, db_url: DbUrl = None, limit: int = 50, as_json: Json = False) -> None:
    """Recorded scenarios, newest first, with their step counts."""
    index, _ = _open(db, db_url)
    rows = data.list_runs(index, model="scenario", limit=limit or None)
    records = []
    for r in rows:
        steps = data.children(index, r["id"])
        records.append({**data.run_record(r), "steps": len(steps),
                        "executed": sum(1 for s in steps if not s.get("cache_hit")),
                        "failed": sum(1 for s in steps if s.get("status") == "failed")})  # fmt: skip
    if as_json:
        _emit(records)
        return
    _print_table(
        ("scenario", "status", "steps", "executed", "failed", "started (UTC)"),
        ((r["id"], r["status"] or "", str(r["steps"]), str(r["executed"]), str(r["failed"]), _when(r["started_at"]))
         for r in records),
    )  # fmt: skip


def _tree(index: Any, run_id: str) -> dict[str, Any]:
    row = data.get_run(index, run_id)
    return {**data.run_record(row), "steps": [_tree(index, c["id"]) for c in data.children(index, run_id)]}


@app.command()
def scenario(name: str, db: Db = None, db_url: DbUrl = None, as_json: Json = False) -> None:
    """A scenario's steps as a tree: executed, cache hit or failed."""
    index, _ = _open(db, db_url)
    _run_or_exit(index, name)
    tree = _tree(index, name)
    if as_json:
        _emit(tree)
        return
    from rich.tree import Tree

    def label(r: dict[str, Any]) -> str:
        state = (
            "failed"
            if r["status"] == "failed"
            else f"hit of {r['cache_source']}"
            if r["cache_hit"]
            else r["status"]
            if r["status"] != "completed"
            else "executed"
        )
        return f"{r['id']}  [dim]{r['model']}[/dim]  {state}"

    def add(node: Any, r: dict[str, Any]) -> None:
        for s in r["steps"]:
            add(node.add(label(s)), s)

    root = Tree(label(tree))
    add(root, tree)
    _console().print(root)


@app.command()
def explain(
    run_id: Annotated[str | None, typer.Argument(help="The run to explain.")] = None,
    signature: Annotated[str | None, typer.Option(help="Say whether a run with this signature would be a hit.")] = None,
    db: Db = None,
    db_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Why a run executed: what differs from the nearest earlier run of its model."""
    index, _ = _open(db, db_url)
    if signature is not None:
        producers = index.producers(signature)
        out: dict[str, Any] = {"signature": signature, "hit": bool(producers),
                               "producer": producers[0]["id"] if producers else None}  # fmt: skip
        if as_json:
            _emit(out)
        else:
            typer.echo(f"a run with this signature would reuse {out['producer']}" if producers
                       else "no completed run has this signature: a run would execute")  # fmt: skip
        raise typer.Exit(0 if producers else 1)
    if run_id is None:
        typer.echo("consist: give a RUN_ID or --signature", err=True)
        raise typer.Exit(2)
    row = _run_or_exit(index, run_id)
    out = data.explanation(index, row)
    if as_json:
        _emit(out)
        return
    con = _console()
    if not out["executed"]:
        con.print(f"{run_id} did not execute: it reused the outputs of {out['cache_source']}")
        return
    if out["reason"] == "no_prior_run":
        con.print(f"{run_id} executed: no earlier run of its model was recorded")
        return
    con.print(f"{run_id} executed: {out['reason'].replace('_', ' ')} "
              f"(compared with {out['nearest_run']}; changed: {', '.join(out['changed']) or 'nothing'})")  # fmt: skip
    if "code" in out:
        con.print(f"  code: {out['code'].get('before')} -> {out['code'].get('after')}", markup=False)
    for c in out.get("config_changes", []):
        con.print(f"  config {c['key']}: {json.dumps(c['before'], default=str)} -> "
                  f"{json.dumps(c['after'], default=str)}", markup=False)  # fmt: skip
    for c in out.get("input_changes", []):
        con.print(f"  input {c['key']}: {c['state']} ({_short(c['hash_a'])} -> {_short(c['hash_b'])})")


@app.command()
def diff(run_a: str, run_b: str, db: Db = None, db_url: DbUrl = None, as_json: Json = False) -> None:
    """How two runs differ: config, inputs and outputs (same, changed, added, removed)."""
    index, _ = _open(db, db_url)
    out = data.run_diff(index, _run_or_exit(index, run_a), _run_or_exit(index, run_b))
    if as_json:
        _emit(out)
        return
    con = _console()
    con.print(f"[bold]config[/bold] ({run_a} -> {run_b})")
    for c in out["config"] or [{"key": "(same)", "before": "", "after": "", "change": ""}]:
        con.print(f"  {c['key']}: {json.dumps(c['before'], default=str)} -> {json.dumps(c['after'], default=str)}"
                  if c["change"] else "  (same)", markup=False)  # fmt: skip
    for label in ("inputs", "outputs"):
        con.print(f"[bold]{label}[/bold]")
        for c in out[label]:
            con.print(f"  {c['key']}: {c['state']}")
            t = c.get("table")
            if t:
                con.print(f"    rows {t['rows_a']} -> {t['rows_b']}; columns added {t['columns_added']}, "
                          f"removed {t['columns_removed']}", markup=False)  # fmt: skip
                for col in t["columns"]:
                    if col["changed"]:
                        con.print(f"    {col['column']}: {col['changed']} values differ"
                                  + (f", mean {col['mean_a']} -> {col['mean_b']}" if "mean_a" in col else ""),
                                  markup=False)  # fmt: skip


@app.command()
def lineage(
    key_or_run: Annotated[str, typer.Argument(help="An artifact key or id, or a run id (its outputs).")],
    db: Db = None,
    db_url: DbUrl = None,
    fmt: Annotated[str, typer.Option("--format", help="tree, dot, mermaid or json.")] = "tree",
    depth: Annotated[int | None, typer.Option(help="Follow producing runs this many levels up.")] = None,
) -> None:
    """How an artifact came to be: the run that produced it and, recursively, that run's inputs."""
    if fmt not in ("tree", "dot", "mermaid", "json"):
        typer.echo(f"consist: unknown --format {fmt!r}: use tree, dot, mermaid or json", err=True)
        raise typer.Exit(2)
    from .. import lineage as lin
    from ..errors import RunNotFoundError

    index, _ = _open(db, db_url)
    try:
        found = lin.lineage_graph(index, key_or_run, depth)
    except RunNotFoundError as exc:
        typer.echo(f"consist: {exc}", err=True)
        raise typer.Exit(1) from None
    trees, nodes, edges = found["trees"], found["nodes"], found["edges"]
    if fmt == "json":
        _emit(found)
    elif fmt == "dot":
        sys.stdout.write(lin.to_dot(nodes, edges))
    elif fmt == "mermaid":
        sys.stdout.write(lin.to_mermaid(nodes, edges))
    else:
        from rich.tree import Tree

        def add(node: Any, t: dict[str, Any]) -> None:
            prod = t["producing_run"]
            if not prod:
                return
            run = node.add(f"[bold]{prod['run']['id']}[/bold] ({prod['run']['model']})")
            for i in prod["inputs"]:
                add(run.add(f"{i['artifact']['key']}  {_short(i['artifact']['hash'])}"), i)

        con = _console()
        for t in trees:
            root = Tree(f"{t['artifact']['key']}  {_short(t['artifact']['hash'])}")
            add(root, t)
            con.print(root)


export_app = typer.Typer(no_args_is_help=True, help="Export the recorded history for other tools.")
app.add_typer(export_app, name="export")


@export_app.command("openlineage")
def export_openlineage(
    db: Db = None,
    db_url: DbUrl = None,
    run: Annotated[list[str] | None, typer.Option(help="Only these runs (repeat); default: every run.")] = None,
    since: Annotated[str | None, typer.Option(help="Only runs started within (2d) or since a date.")] = None,
    namespace: Annotated[str, typer.Option(help="The OpenLineage job namespace.")] = "consist",
) -> None:
    """OpenLineage run events (START and COMPLETE/FAIL per run), one JSON object per line.

    Send them to Marquez or any OpenLineage consumer, for example
    ``consist export openlineage | while read -r e; do curl -s -H 'Content-Type: application/json'
    -d "$e" http://marquez:5000/api/v1/lineage; done``.
    """
    from ..lineage import openlineage_events

    index, _ = _open(db, db_url)
    if run:
        rows = [_run_or_exit(index, r) for r in run]
    else:
        since_at = data.since_epoch(since) if since else None
        rows = list(reversed(data.list_runs(index, since=since_at, limit=None)))  # oldest first
    for event in openlineage_events(index, rows, namespace):
        sys.stdout.write(json.dumps(event, default=str, separators=(",", ":")) + "\n")


@app.command()
def verify(
    db: Db = None,
    db_url: DbUrl = None,
    drop: Annotated[bool, typer.Option(help="Remove damaged objects (their runs then execute again).")] = False,
    as_json: Json = False,
) -> None:
    """Check every stored object against its hash. Exit code 1 when one is damaged."""
    from ..errors import IntegrityError
    from ..objects import ObjectStore

    index, _ = _open(db, db_url)

    class _NoMemo:  # verifying reads every byte: no hash memo is consulted or written
        def memo_get(self, key: Any, algo: str) -> None:
            return None

        def memo_put(self, key: Any, algo: str, digest: str) -> None:
            return None

    checked, damaged = 0, []
    for root in data.object_stores(index, None):
        store = ObjectStore(root, memo=_NoMemo())
        for digest, _path in list(store.all_objects()):
            checked += 1
            try:
                store.verify(digest)
            except IntegrityError as exc:
                damaged.append({"store": str(root), "hash": digest, "error": str(exc)})
                if drop:
                    store.remove(digest)
    report = {"checked": checked, "damaged": damaged, "dropped": len(damaged) if drop else 0}
    if as_json:
        _emit(report)
    else:
        typer.echo(f"{checked} objects checked, {len(damaged)} damaged" + (", dropped" if drop and damaged else ""))
        for d in damaged:
            typer.echo(f"  {d['hash']} in {d['store']}: {d['error']}")
    raise typer.Exit(1 if damaged else 0)


@app.command()
def gc(
    db: Db = None,
    db_url: DbUrl = None,
    older_than_days: Annotated[float | None, typer.Option(help="Keep the outputs of runs newer than this.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only count what would be removed.")] = False,
    run_dir: Annotated[str | None, typer.Option(help="The workspace whose object store to prune.")] = None,
    as_json: Json = False,
) -> None:
    """Remove stored objects no completed run needs (writes: it deletes objects)."""
    import datetime as dt

    from ..tracker import Tracker

    path, url = data.find_database(db, db_url)
    base = Path(run_dir) if run_dir else (path.resolve().parent if path is not None else Path.cwd())
    with Tracker(base, db_path=path, db_url=url) as t:
        age = dt.timedelta(days=older_than_days) if older_than_days is not None else None
        report = t.prune_store(age, dry_run=dry_run)
    if as_json:
        _emit(report)
    else:
        verb = "would remove" if dry_run else "removed"
        typer.echo(f"{verb} {report['removed']} objects ({report['bytes_freed']:,} bytes); kept {report['kept']}, "
                   f"in use {report['in_use']}")  # fmt: skip


@app.command()
def log(
    run_id: str,
    db: Db = None,
    db_url: DbUrl = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the run is running.")] = False,
    lines: Annotated[int, typer.Option(help="Print this many last lines first (0: all).")] = 0,
) -> None:
    """A container run's log (``<run_dir>/<run_id>/container.log``)."""
    index, _ = _open(db, db_url)
    row = _run_or_exit(index, run_id)
    path = data.log_path(row)
    if path is None:
        typer.echo(f"consist: run {run_id} has no container log", err=True)
        raise typer.Exit(1)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
        out = text.splitlines(keepends=True)
        sys.stdout.write("".join(out[-lines:] if lines else out))
        sys.stdout.flush()
        while follow:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
                continue
            current = index.run(run_id)
            if current is None or current.get("status") != "running":
                sys.stdout.write(f.read())
                break
            time.sleep(0.5)


@app.command()
def ui(
    db: Db = None,
    db_url: DbUrl = None,
    host: Annotated[str, typer.Option(help="The address to listen on; keep 127.0.0.1 unless others must see it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="The port (0: any free one).")] = 8765,
) -> None:
    """A read-only web view of the runs: tables, run pages, scenarios, lineage, comparisons."""
    import socket

    import uvicorn

    from ..ui import create_app

    index, _ = _open(db, db_url)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        typer.echo(f"consist: cannot listen on {host}:{port}: {exc}. Fix: pick another --port.", err=True)
        raise typer.Exit(2) from None
    bound = sock.getsockname()[1]
    typer.echo(f"consist ui: http://{host}:{bound}/  (read-only; Ctrl-C stops it)", err=True)
    config = uvicorn.Config(create_app(index), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    """The ``consist`` command."""
    from ..errors import ConsistError

    try:
        app()
    except ConsistError as exc:
        typer.echo(f"consist: {exc}", err=True)
        sys.exit(2)


__all__ = ["app", "main"]
