"""Lineage: how an artifact came to be, as a tree, a graph, DOT, Mermaid or OpenLineage events.

:func:`walk` follows an artifact to the run that produced it and, recursively,
that run's inputs. :func:`graph` flattens such trees into nodes (artifacts and
runs) and edges (input -> run -> output). :func:`to_dot` and :func:`to_mermaid`
draw a graph; :func:`openlineage_events` describes runs as OpenLineage run events
(https://openlineage.io), which Marquez and other OpenLineage consumers take.
All of it reads a run index only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from .records import artifact_record, run_record
from .store.index import RunIndex


def walk(index: RunIndex, start: dict[str, Any], max_depth: int | None = None) -> dict[str, Any]:
    """An artifact, the run that produced it, and recursively that run's inputs."""

    def node(art: dict[str, Any], depth: int, seen: frozenset[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"artifact": artifact_record(art), "producing_run": None}
        run_id = art.get("run_id")
        if not run_id or run_id in seen or (max_depth is not None and depth >= max_depth):
            return out
        run = index.run(run_id)
        if run is None:
            return out
        inputs = index.links_of(run_id, "input")
        out["producing_run"] = {
            "run": run_record(run),
            "inputs": [node(i, depth + 1, seen | {run_id}) for i in inputs],
        }
        return out

    return node(start, 0, frozenset())


def graph(tree: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes (artifacts and runs) and edges (input -> run -> output) of a lineage tree."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []

    def visit(n: dict[str, Any]) -> str:
        art = n["artifact"]
        aid = f"artifact:{art['key']}:{(art['hash'] or '')[7:19]}"
        nodes.setdefault(aid, {"id": aid, "type": "artifact", "label": art["key"], "hash": art["hash"]})
        prod = n["producing_run"]
        if prod:
            rid = f"run:{prod['run']['id']}"
            nodes.setdefault(rid, {"id": rid, "type": "run", "label": prod["run"]["id"],
                                   "model": prod["run"]["model"]})  # fmt: skip
            edge = {"from": rid, "to": aid}
            if edge not in edges:
                edges.append(edge)
            for i in prod["inputs"]:
                iid = visit(i)
                edge = {"from": iid, "to": rid}
                if edge not in edges:
                    edges.append(edge)
        return aid

    visit(tree)
    return list(nodes.values()), edges


def to_dot(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> str:
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=LR;"]
    for n in nodes:
        shape = "box" if n["type"] == "run" else "ellipse"
        lines.append(f"  {q(n['id'])} [label={q(n['label'])}, shape={shape}];")
    lines += [f"  {q(e['from'])} -> {q(e['to'])};" for e in edges]
    return "\n".join([*lines, "}"]) + "\n"


def to_mermaid(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> str:
    ids = {n["id"]: f"n{i}" for i, n in enumerate(nodes)}

    def label(s: str) -> str:
        return s.replace('"', "#quot;")

    lines = ["flowchart LR"]
    for n in nodes:
        lines.append(f'  {ids[n["id"]]}["{label(n["label"])}"]' if n["type"] == "run"
                     else f'  {ids[n["id"]]}(["{label(n["label"])}"])')  # fmt: skip
    lines += [f"  {ids[e['from']]} --> {ids[e['to']]}" for e in edges]
    return "\n".join(lines) + "\n"


def lineage_graph(index: RunIndex, key_or_run: str, max_depth: int | None = None) -> dict[str, Any]:
    """Nodes and edges of the lineage of an artifact (newest under that key, or that id) or a run's outputs."""
    if index.run(key_or_run) is not None:
        starts = index.links_of(key_or_run, "output")
    else:
        row = index.query_one(
            "SELECT * FROM artifact WHERE key = ? OR id = ? ORDER BY (run_id IS NULL), created_at DESC LIMIT 1",
            (key_or_run, key_or_run),
        )
        if row is None:
            from .errors import RunNotFoundError

            raise RunNotFoundError(f"No artifact or run {key_or_run!r}", None,
                                   "list a run's artifacts with tracker.get_artifacts_for_run(run_id)")  # fmt: skip
        starts = [row]
    trees = [walk(index, s, max_depth) for s in starts]
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for t in trees:
        n, e = graph(t)
        nodes += [x for x in n if x not in nodes]
        edges += [x for x in e if x not in edges]
    return {"trees": trees, "nodes": nodes, "edges": edges}


#: The OpenLineage spec version the events follow, and who produced them.
OPENLINEAGE_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
PRODUCER = "https://pypi.org/project/consist/"
_RUN_NAMESPACE = uuid.UUID("6f6e7369-7374-4c69-8e65-616765000001")


def _dataset(art: dict[str, Any]) -> dict[str, Any]:
    a = artifact_record(art)
    return {
        "namespace": "file",
        "name": a["path"] or a["location"] or a["key"],
        "facets": {
            "consist": {"_producer": PRODUCER, "_schemaURL": f"{PRODUCER}#dataset-facet", "key": a["key"],
                        "hash": a["hash"], "kind": a["kind"], "location": a["location"], "size": a["size"]},
        },
    }  # fmt: skip


def openlineage_events(index: RunIndex, runs: Iterable[dict[str, Any]], namespace: str = "consist") -> Iterator[dict]:
    """Two OpenLineage run events per run (START, then COMPLETE, FAIL or ABORT; only START while running).

    The run id is a UUID derived from the consist run id (the same every export),
    the job is the run's model, inputs and outputs are file datasets, and a
    ``consist`` facet carries the signature, cache hit and its source.
    """
    for row in runs:
        r = run_record(row)
        run = {
            "runId": str(uuid.uuid5(_RUN_NAMESPACE, r["id"])),
            "facets": {
                "consist": {"_producer": PRODUCER, "_schemaURL": f"{PRODUCER}#run-facet", "run_id": r["id"],
                            "signature": r["signature"], "cache_hit": r["cache_hit"],
                            "cache_source": r["cache_source"], "year": r["year"], "iteration": r["iteration"],
                            "tags": r["tags"]},
            },
        }  # fmt: skip
        if r["parent_run_id"]:
            parent = index.run(r["parent_run_id"])
            run["facets"]["parent"] = {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/ParentRunFacet.json#/$defs/ParentRunFacet",
                "run": {"runId": str(uuid.uuid5(_RUN_NAMESPACE, r["parent_run_id"]))},
                "job": {"namespace": namespace, "name": (parent or {}).get("model") or r["parent_run_id"]},
            }
        job = {"namespace": namespace, "name": r["model"] or r["id"]}
        inputs = [_dataset(a) for a in index.links_of(r["id"], "input")]
        outputs = [_dataset(a) for a in index.links_of(r["id"], "output")]
        base = {"producer": PRODUCER, "schemaURL": OPENLINEAGE_SCHEMA, "run": run, "job": job}
        yield {**base, "eventType": "START", "eventTime": r["started_at"], "inputs": inputs, "outputs": []}
        end = {"completed": "COMPLETE", "failed": "FAIL", "interrupted": "ABORT"}.get(r["status"] or "")
        if end is not None:
            yield {**base, "eventType": end, "eventTime": r["ended_at"] or r["started_at"], "inputs": inputs,
                   "outputs": outputs}  # fmt: skip
