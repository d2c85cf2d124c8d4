"""Loading index rows into DuckDB through a CSV file that DuckDB reads itself.

A merge hands DuckDB each window's rows as lines of one CSV dialect, written to a
temporary file beside the run index and read by DuckDB's own ``read_csv`` with
every column's type given (nothing is guessed). Neither Python objects per value
nor pyarrow are needed, which keeps a merge of many runs small in memory.

The dialect is SQLite's ``quote()``: text in single quotes with quotes doubled,
``NULL`` bare, numbers bare. The timestamp columns (epoch seconds, REAL in the
index) come last in each line, written by Python's ``repr`` (an exact round trip),
and are converted by DuckDB exactly as ``datetime.fromtimestamp(x, UTC)`` does.
"""

from __future__ import annotations

import errno
import itertools
import os
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .columns import ARTIFACT_COLUMNS, HOST, LINK_COLUMNS, RUN_COLUMNS, TIMESTAMP_COLUMNS, pid_alive

#: Each table's columns, as the DuckDB file has them.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "run": RUN_COLUMNS,
    "artifact": ARTIFACT_COLUMNS,
    "run_artifact": LINK_COLUMNS,
}
_INTEGER = frozenset({"year", "iteration", "cache_epoch", "pid", "cache_hit"})
_BIGINT = frozenset({"size"})
_PREFIX = ".merge-"
_counter = itertools.count()


def csv_type(column: str) -> str:
    """The type ``read_csv`` reads a column as."""
    if column in TIMESTAMP_COLUMNS:
        return "DOUBLE"
    if column in _BIGINT:
        return "BIGINT"
    return "INTEGER" if column in _INTEGER else "VARCHAR"


def line_order(table: str) -> tuple[list[str], list[str]]:
    """A line's columns: the quoted ones first, then the timestamps."""
    cols = TABLE_COLUMNS[table]
    return [c for c in cols if c not in TIMESTAMP_COLUMNS], [c for c in cols if c in TIMESTAMP_COLUMNS]


def value_text(value: Any) -> str:
    """One value in the dialect: what SQLite's ``quote()`` writes, floats as ``repr``."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"a {type(value).__name__} cannot be written to the merge file: {value!r}")


def lines_of(table: str, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The CSV lines of index rows (dicts by column name), written by Python."""
    quoted, reals = line_order(table)
    order = [*quoted, *reals]
    return [",".join(value_text(row.get(c)) for c in order) for row in rows]


def _timestamp_sql(column: str) -> str:
    # Whole seconds, plus the fraction's microseconds rounded half to even: what
    # datetime.fromtimestamp(x, UTC) gives (to_timestamp differs on ties and before 1970).
    return (
        f"make_timestamp(CAST(floor({column}) AS BIGINT) * 1000000 "
        f"+ CAST(round_even(({column} - floor({column})) * 1000000, 0) AS BIGINT)) AS {column}"
    )


def _select(table: str) -> str:
    out = []
    for c in TABLE_COLUMNS[table]:
        if c in TIMESTAMP_COLUMNS:
            out.append(_timestamp_sql(c))
        elif c == "cache_hit":
            out.append("coalesce(cache_hit <> 0, false) AS cache_hit")  # 0/1 in the index
        else:
            out.append(c)  # VARCHAR into a JSON column: DuckDB's cast checks the JSON
    return ", ".join(out)


def _load_sql(table: str) -> str:
    quoted, reals = line_order(table)
    spec = "{" + ", ".join(f"'{c}': '{csv_type(c)}'" for c in [*quoted, *reals]) + "}"
    return (
        f"INSERT OR REPLACE INTO {table} ({','.join(TABLE_COLUMNS[table])}) SELECT {_select(table)} "
        f"FROM read_csv($path, columns = {spec}, header = false, auto_detect = false, delim = ',', "
        "quote = '''', escape = '''', nullstr = 'NULL', allow_quoted_nulls = false, new_line = '\\n', "
        "strict_mode = true, max_line_size = 1073741824)"
    )


def load(con: Any, table: str, lines: Sequence[str], folder: Path) -> None:
    """Insert (or replace, by primary key) the rows of ``lines`` into ``table`` on ``con``.

    The lines are written to a new file in ``folder`` (never through a link planted
    there), read by DuckDB and removed, whatever happens.
    """
    if not lines:
        return
    path = folder / f"{_PREFIX}{HOST}-{os.getpid()}-{next(_counter)}-{table}.csv"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise  # told as a full disk by the merge
        raise StoreError(
            f"Cannot write the merge file {path}: {exc}",
            "something else put a file or a link at that name in consist's index folder",
            f"remove it (rm {shlex.quote(str(path))}) and query again; nothing was merged",
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            for chunk in _batched(lines):
                f.write("\n".join(chunk))
                f.write("\n")
        con.execute(_load_sql(table), {"path": str(path)})
    finally:
        path.unlink(missing_ok=True)


def _batched(lines: Sequence[str], n: int = 1000) -> Iterable[Sequence[str]]:
    for start in range(0, len(lines), n):
        yield lines[start : start + n]


def remove_stale(folder: Path, older_than_s: float = 86400.0) -> None:
    """Remove merge files left by processes of this host that ended mid-merge (or a day ago)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(f"{_PREFIX}{HOST}-"):
            continue
        pid = name[len(_PREFIX) + len(HOST) + 1 :].split("-", 1)[0]
        path = folder / name
        try:
            gone = not pid.isdigit() or not pid_alive(int(pid))
            if gone or time.time() - path.lstat().st_mtime > older_than_s:
                path.unlink()
        except OSError:
            continue
