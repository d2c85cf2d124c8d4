"""``consist ui``: a local, read-only web view of the recorded runs.

A Starlette app over the run index opened read-only (the same reads as the
command line, :mod:`consist.cli.data`): a runs table paged on the server, run
pages, scenario trees, a lineage graph to click through (cytoscape.js) and a
compare page for two runs or two scenarios, with a chart of a numeric column of
their tables (Chart.js). The front-end libraries are files of the package
(``scripts/vendor-ui.py`` puts them there from the npm registry); nothing is
fetched from the internet when it runs.

It binds to 127.0.0.1 unless told otherwise, answers only GET (and HEAD), and
serves no file but a recorded artifact that is still the regular file at its
recorded place, and at most :data:`MAX_DOWNLOAD` bytes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..cli import data
from ..store.index import RunIndex

HERE = Path(__file__).resolve().parent
#: The largest artifact the web view lets a browser download.
MAX_DOWNLOAD = 10 * 1024 * 1024
PAGE_SIZES = (25, 50, 100, 200)
SORTABLE = {"started_at", "model", "status", "id", "ended_at"}


def create_app(index: RunIndex) -> Any:
    """The web view of ``index`` (opened read-only), as an ASGI app."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["short"] = lambda h: (h or "")[7:19] if (h or "").startswith("sha256:") else (h or "")
    env.filters["when"] = lambda iso: (iso or "")[:19].replace("T", " ")
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    vendor_ready = (HERE / "static" / "vendor" / "cytoscape.min.js").is_file()

    def page(name: str, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(location=index.location, vendor_ready=vendor_ready, **ctx))

    def run_or_404(run_id: str) -> dict[str, Any]:
        row = index.run(run_id)
        if row is None:
            raise HTTPException(404, f"No run {run_id!r}")
        return row

    async def runs(request: Request) -> HTMLResponse:
        q = request.query_params
        size = int(q.get("size", 50)) if q.get("size", "50").isdigit() else 50
        size = size if size in PAGE_SIZES else 50
        pg = max(1, int(q["page"])) if q.get("page", "").isdigit() else 1
        sort = q.get("sort") if q.get("sort") in SORTABLE else "started_at"
        desc = q.get("dir", "desc") != "asc"
        where, params = [], []
        for col in ("model", "status"):
            if q.get(col):
                where.append(f"{col} = ?")
                params.append(q[col])
        if q.get("hit") in ("0", "1"):
            where.append("cache_hit = ?")
            params.append(int(q["hit"]))
        if q.get("q"):
            where.append("(id LIKE ? OR model LIKE ? OR tags LIKE ?)")
            like = "%" + q["q"].replace("%", "").replace("_", "") + "%"
            params += [like, like, like]
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        total = index.query_one(f"SELECT count(*) AS n FROM run{clause}", params)["n"]  # type: ignore[index]
        rows = index.query(
            f"SELECT * FROM run{clause} ORDER BY {sort} {'DESC' if desc else 'ASC'}, id LIMIT ? OFFSET ?",
            [*params, size, (pg - 1) * size],
        )
        models = [r["model"] for r in index.query("SELECT DISTINCT model FROM run ORDER BY model") if r["model"]]
        return page("runs.html", runs=[data.run_record(r) for r in rows], total=total, page=pg, size=size,
                    pages=max(1, -(-total // size)), sort=sort, desc=desc, q=dict(q), models=models,
                    sizes=PAGE_SIZES)  # fmt: skip

    async def run_page(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        row = run_or_404(run_id)
        log = data.log_path(row)
        return page(
            "run.html", run=data.run_record(row), identity=data.loads(row.get("identity")) or {},
            config=data.flatten(data.loads(row.get("config")) or {}), error=row.get("error"),
            inputs=index.links_of(run_id, "input"), outputs=index.links_of(run_id, "output"),
            explanation=data.explanation(index, row),
            children=[data.run_record(c) for c in data.children(index, run_id)],
            log_tail=data.tail(log, 40) if log else [], max_download=MAX_DOWNLOAD,
        )  # fmt: skip

    def tree(run_id: str) -> dict[str, Any]:
        row = run_or_404(run_id)
        expl = data.explanation(index, row)
        return {**data.run_record(row), "why": expl, "steps": [tree(c["id"]) for c in data.children(index, run_id)]}

    async def scenario_page(request: Request) -> HTMLResponse:
        return page("scenario.html", tree=tree(request.path_params["name"]))

    async def lineage_page(request: Request) -> HTMLResponse:
        return page("lineage.html", start=request.path_params["key"])

    async def lineage_api(request: Request) -> JSONResponse:
        from ..errors import RunNotFoundError
        from ..lineage import lineage_graph

        try:
            g = lineage_graph(index, request.path_params["key"])
        except RunNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        return JSONResponse({"nodes": g["nodes"], "edges": g["edges"]})

    def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        outputs = data.artifact_changes(data.artifacts_by_key(index, a["id"], "output"),
                                        data.artifacts_by_key(index, b["id"], "output"))  # fmt: skip
        for change in outputs:
            if change["state"] in ("changed", "same"):
                change["table"] = data.table_summary(change["path_a"], change["path_b"])
                change["series"] = _series(change["path_a"], change["path_b"]) if change["table"] else None
        return {
            "a": data.run_record(a), "b": data.run_record(b),
            "config": data.changes(data.flatten(data.loads(a.get("config")) or {}),
                                   data.flatten(data.loads(b.get("config")) or {})),
            "inputs": data.artifact_changes(data.artifacts_by_key(index, a["id"], "input"),
                                            data.artifacts_by_key(index, b["id"], "input")),
            "outputs": outputs, "why_b": data.explanation(index, b),
        }  # fmt: skip

    async def compare(request: Request) -> HTMLResponse:
        a_id, b_id = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not a_id or not b_id:
            return page("compare_pick.html", a=a_id, b=b_id)
        a, b = run_or_404(a_id), run_or_404(b_id)
        steps = []
        if a.get("model") == "scenario" and b.get("model") == "scenario":
            sa = {c["model"]: c for c in data.children(index, a_id)}
            sb = {c["model"]: c for c in data.children(index, b_id)}
            for model in list(dict.fromkeys([*sa, *sb])):
                if model in sa and model in sb:
                    steps.append({"model": model, **compare_runs(sa[model], sb[model])})
                else:
                    steps.append({"model": model, "only": "a" if model in sa else "b"})
            top = {"a": data.run_record(a), "b": data.run_record(b),
                   "config": data.changes(data.flatten(data.loads(a.get("config")) or {}),
                                          data.flatten(data.loads(b.get("config")) or {}))}  # fmt: skip
        else:
            top = compare_runs(a, b)
        return page("compare.html", top=top, steps=steps)

    async def download(request: Request) -> Response:
        art = index.query_one("SELECT * FROM artifact WHERE id = ?", (request.path_params["artifact_id"],))
        path = _servable(art)
        if path is None:
            raise HTTPException(404, "Not a downloadable artifact")
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    async def not_found(request: Request, exc: Exception) -> HTMLResponse:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "error")
        body = env.get_template("error.html").render(status=status, detail=detail, location=index.location)
        return HTMLResponse(body, status_code=status)

    routes = [
        Route("/", runs, methods=["GET"]),
        Route("/runs/{run_id:str}", run_page, methods=["GET"]),
        Route("/scenarios/{name:str}", scenario_page, methods=["GET"]),
        Route("/lineage/{key:str}", lineage_page, methods=["GET"]),
        Route("/api/lineage/{key:str}", lineage_api, methods=["GET"]),
        Route("/compare", compare, methods=["GET"]),
        Route("/files/{artifact_id:str}", download, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def _servable(art: dict[str, Any] | None) -> Path | None:
    """The recorded file of an artifact, if it is still a regular file there and small enough."""
    if art is None or art.get("kind") != "file" or not art.get("uri"):
        return None
    path = Path(art["uri"])
    try:
        st = os.lstat(path)  # a link put in its place is not the recorded file
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_DOWNLOAD:
        return None
    if art.get("size") is not None and st.st_size != art["size"]:
        return None
    if os.path.realpath(path) != str(path):  # a link in one of its folders
        return None
    return path


def _series(path_a: str | None, path_b: str | None) -> dict[str, Any] | None:
    """The first numeric column of two small tables, row by row, for a chart."""
    import duckdb

    out: dict[str, Any] = {}
    for side, p in (("a", path_a), ("b", path_b)):
        if not p:
            return None
        reader = "read_csv_auto" if p.endswith(".csv") else "read_parquet"
        literal = "'" + p.replace("'", "''") + "'"
        con = duckdb.connect()
        try:
            rel = con.execute(f"SELECT * FROM {reader}({literal}) LIMIT 200")
            cols = [d[0] for d in rel.description]
            rows = rel.fetchall()
        except duckdb.Error:
            return None
        finally:
            con.close()
        numeric = [i for i, c in enumerate(cols) if rows and all(isinstance(r[i], int | float) for r in rows)]
        if len(numeric) < 1:
            return None
        col = numeric[-1]
        out[side] = [r[col] for r in rows]
        out["column"] = cols[col]
        out["labels"] = [str(r[0]) for r in rows]
    return out
