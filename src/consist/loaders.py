"""``load_df``: read an artifact or path into a pandas DataFrame.

Single files are read by pandas with your keyword arguments; directories of
CSV or Parquet files are read by DuckDB in one vectorised scan (files with
different columns are returned separately, never stacked). pandas and DuckDB are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConsistError, InputNotFoundError
from .paths import as_path

if TYPE_CHECKING:
    import pandas as pd

_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
}  # fmt: skip


def _path_of(obj: Any) -> Path:
    path = as_path(obj)
    if path is not None:
        return path
    raise ConsistError(
        f"load_df() got a {type(obj).__name__}",
        None,
        "pass a path, an Artifact (for example result.outputs[key] or coupler.require(key))",
    )


def load_df(artifact_or_path: Any, **kwargs: Any) -> pd.DataFrame:
    """Load a CSV, Parquet, JSON or JSON-lines file, or a directory of CSV/Parquet files.

    Keyword arguments go to the pandas reader (``pd.read_csv`` and friends) for
    single files. A directory whose files share their columns is read as one
    table; when the files have different columns they are never stacked into a
    mixed table: a :class:`ConsistWarning` lists them and a :class:`Tables` dict
    (relative path -> DataFrame) is returned, to pick from.
    """
    path = _path_of(artifact_or_path)
    if not path.exists():
        raise InputNotFoundError(path, "load_df")
    if path.is_dir():
        return _load_dir(path)
    import pandas as pd

    fmt = _FORMATS.get(path.suffix.lower())
    if fmt == "csv":
        return pd.read_csv(path, **kwargs)
    if fmt == "tsv":
        return pd.read_csv(path, sep="\t", **kwargs)
    if fmt == "parquet":
        return pd.read_parquet(path, **kwargs)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, **kwargs)
    if fmt == "json":
        text = path.read_text().lstrip()
        if text.startswith("{") and "\n{" in text:
            return pd.read_json(path, lines=True, **kwargs)
        return pd.read_json(path, **kwargs)
    raise ConsistError(
        f"load_df() cannot tell the format of {path}",
        "the extension is not one of .csv, .tsv, .parquet, .json, .jsonl",
        "read the file yourself, for example with pandas",
    )


def _load_dir(path: Path) -> pd.DataFrame:
    import duckdb

    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    parquet = [p for p in files if p.suffix.lower() in (".parquet", ".pq")]
    csv = [p for p in files if p.suffix.lower() in (".csv", ".tsv")]
    if not parquet and not csv:
        raise ConsistError(
            f"load_df() found no CSV or Parquet files in directory {path}",
            "the step wrote other formats, or nothing",
            "load the files you need one by one",
        )
    tables = parquet or csv
    mixed = _column_groups(path, tables, parquet=bool(parquet))
    if mixed:
        return _separate_tables(path, tables, mixed)
    con = duckdb.connect()
    try:
        if parquet:
            rel = con.read_parquet([str(p) for p in sorted(parquet)], union_by_name=True)
        else:
            rel = con.read_csv([str(p) for p in sorted(csv)], union_by_name=True)
        return rel.df()
    finally:
        con.close()


def _columns(file: Path, parquet: bool) -> tuple[str, ...]:
    if parquet:
        import pyarrow.parquet as pq

        return tuple(pq.read_schema(file).names)
    import csv

    with open(file, newline="", encoding="utf-8", errors="replace") as f:
        dialect = csv.excel_tab if file.suffix.lower() == ".tsv" else csv.excel
        return tuple(next(csv.reader(f, dialect), []))


class Tables(dict):  # type: ignore[type-arg]
    """The tables of a directory whose files have different columns: relative path -> DataFrame.

    What :func:`load_df` returns instead of stacking unlike tables into one mixed frame.
    """

    def __repr__(self) -> str:
        return f"Tables({', '.join(self)})"


def _column_groups(path: Path, files: list[Path], *, parquet: bool) -> list[str]:
    """One line per distinct column set when the files differ, else an empty list."""
    groups: dict[tuple[str, ...], list[Path]] = {}
    for f in sorted(files):
        groups.setdefault(_columns(f, parquet), []).append(f)
    if len(groups) <= 1:
        return []
    lines = []
    for cols, members in groups.items():
        names = ", ".join(m.relative_to(path).as_posix() for m in members[:3]) + (" ..." if len(members) > 3 else "")
        lines.append(f"  [{', '.join(cols) or 'no header'}]: {names}")
    return lines


def _separate_tables(path: Path, files: list[Path], groups: list[str]) -> Tables:
    import warnings

    from .errors import ConsistWarning

    rels = sorted(f.relative_to(path).as_posix() for f in files)
    warnings.warn(
        f"load_df(): the files of {path} have different columns, so they are not stacked into one table; "
        f"a dict of tables by relative path is returned instead. Pick one, e.g. load_df(Path({str(path)!r}) / "
        f"{rels[0]!r}) or result[{rels[0]!r}].\n" + "\n".join(groups),
        ConsistWarning,
        stacklevel=3,
    )
    return Tables((rel, load_df(path / rel)) for rel in rels)
