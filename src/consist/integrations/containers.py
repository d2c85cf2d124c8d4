"""``run_container``: cached, provenance-tracked runs of containerised tools.

A container run is identified by (see the guide's table):

- the image digest: the registry manifest digest when the image came from a
  registry, else the local image ID (Docker, Podman); the SHA-256 of the ``.sif``
  file (Apptainer/Singularity); never the tag string;
- the exact command (argument list), the working directory and the backend;
- the environment, as a keyed hash (HMAC-SHA256 with a secret kept beside the
  database in ``.<db name>.consist/env.key``, mode 0600): values are never
  stored, logged or put on a command line, and without the key file the stored
  hash cannot be checked against guesses;
- the container-side mount paths (host paths are not part of the key, so the
  same inputs under another checkout or machine are a hit);
- the SHA-256 content hash of every input.

On a hit no container starts: outputs are restored to the requested host
paths from the object store, checked first. On a miss the container runs, its
stdout and stderr are kept as the run's log, and its outputs are stored.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import secrets
import shlex
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import logs
from ..containers import ContainerSpec, Mount, get_backend
from ..containers import mounts as mounts_mod
from ..errors import (
    ConsistError,
    ConsistWarning,
    ContainerError,
    ContainerExecutionError,
    ContainerTimeoutError,
    PathNotAllowedError,
    check_option,
)
from ..hashing import canonical, dumps, hash_canonical
from ..names import check_run_id
from ..results import RunResult

if TYPE_CHECKING:
    from ..models import Artifact
    from ..tracker import Tracker

log_warn = warnings.warn

MAX_COMMAND_CHARS = 100_000


@dataclasses.dataclass
class ContainerResult:
    """What :func:`run_container` returns.

    Attributes
    ----------
    run_id:
        The recorded run (None with ``lineage_mode="none"``).
    cache_hit, cache_source:
        Whether outputs were restored instead of running, and from which run.
    artifacts:
        Output key → Artifact; ``artifact.path`` is the requested host path.
    manifest, manifest_hash:
        What identifies the container call without host paths or environment
        values (image digest, command, environment hash, mounts, working dir,
        backend), and its SHA-256.
    image_digest:
        The content digest the image resolved to.
    waited_for:
        The run this one waited for because it was executing the same container
        step at the same time (see :attr:`RunResult.waited_for`), or None.
    """

    run_id: str | None
    cache_hit: bool
    cache_source: str | None
    artifacts: dict[str, Artifact]
    manifest: dict[str, Any]
    manifest_hash: str
    image_digest: str
    log_path: Path | None = None
    missing_outputs: list[str] = dataclasses.field(default_factory=list)
    run_result: RunResult | None = dataclasses.field(default=None, repr=False)

    @property
    def waited_for(self) -> str | None:
        return self.run_result.waited_for if self.run_result is not None else None

    @property
    def output(self) -> Artifact | None:
        """The first output artifact (None when there is none)."""
        return next(iter(self.artifacts.values()), None)


# --------------------------------------------------------------------- validation


def _command(command: str | Sequence[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise ConsistError("The container command is empty", None, 'pass a list such as ["python", "model.py"]')
    for tok in argv:
        if not isinstance(tok, str):
            raise ConsistError(
                f"Command arguments must be strings, got {tok!r} ({type(tok).__name__})",
                None,
                "convert numbers and paths with str()",
            )
        if "\0" in tok:
            raise ConsistError("A command argument contains a NUL byte", None, "remove it")
    if sum(len(t) for t in argv) > MAX_COMMAND_CHARS:
        raise ConsistError(
            "The container command is longer than 100,000 characters",
            "configuration passed on the command line",
            "write it to a file, mount the file and pass it via inputs=",
        )
    return argv


def _allowed_roots(tracker: Tracker) -> list[Path]:
    return [tracker.run_dir, tracker.project_root, *tracker.mounts.values()]


def plan_mounts(tracker: Tracker, volumes: Mapping[str, str] | Sequence[str] | None, strict: bool) -> list[Mount]:
    """Validated bind mounts (see :mod:`consist.containers.mounts`)."""
    return mounts_mod.plan_mounts(volumes, roots=_allowed_roots(tracker), strict=strict)


def plan_outputs(tracker: Tracker, outputs: Any, strict: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """(key → absolute host path, key → path as the caller wrote it)."""
    if outputs is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(outputs, Mapping):
        items = [(str(k), v) for k, v in outputs.items()]
    elif isinstance(outputs, (str, os.PathLike)):
        items = [(Path(outputs).name, outputs)]
    else:
        items = [(Path(p).name, p) for p in outputs]
    paths: dict[str, Path] = {}
    written: dict[str, str] = {}
    for key, p in items:
        if key in paths:
            raise ConsistError(
                f"Two outputs share the artifact key {key!r}", None, "pass outputs as a dict with distinct keys"
            )
        # Resolve the folders, not the output itself: an output that is a symlink (a
        # container may write one) is recorded and restored as the link, in its place.
        raw = Path(os.path.abspath(Path(p).expanduser()))
        path = raw.parent.resolve() / raw.name if raw.name else mounts_mod.resolve_host(p)
        if strict and not tracker.allow_external_paths:
            roots = _allowed_roots(tracker)
            if not any(path == r or path.is_relative_to(r) for r in roots):
                raise PathNotAllowedError(
                    f"Container output path {path} is outside run_dir and the allowed roots",
                    "outputs are kept under the tracker's run_dir, project root or mounts",
                    "move the output there, or set allow_external_paths=True (or CONSIST_ALLOW_EXTERNAL_PATHS=1)",
                )
        paths[key] = path
        written[key] = str(p)
    return paths, written


def environment_hash(tracker: Tracker | None, env: Mapping[str, str]) -> str:
    """The environment's part of the key, with no value recoverable from it.

    No variables: a plain hash of the empty name list, the same on every machine.
    With variables: an HMAC of names and values under a key kept beside the
    database (``.<db>.consist/env.key``, mode 0600), never inside it, so the stored
    hash cannot be checked against guessed values. Trackers sharing a database
    share the key; to compare across databases, copy the key file.
    """
    if not env:
        return hash_canonical([], "consist-env-names-v1")
    body = dumps(sorted(env.items())).encode()
    key = _env_key(tracker) if tracker is not None else b"consist-no-tracker"
    return "hmac-sha256:" + hmac.new(key, body, "sha256").hexdigest()


def _env_key(tracker: Tracker) -> bytes:
    path = tracker._index.path.parent / "env.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f"env.key.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # first writer wins; every process then uses the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def model_from_image(image: str) -> str:
    """A model name from an image reference: ``my-org/activitysim:v1.0`` → ``activitysim``."""
    ref = image.removeprefix("docker://").removeprefix("sif://")
    if ref.endswith(".sif"):
        return Path(ref).stem
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0] or "container"


# --------------------------------------------------------------------- run_container


def run_container(
    tracker: Tracker,
    run_id: str,
    image: str,
    command: str | Sequence[str],
    volumes: Mapping[str, str] | None,
    inputs: Sequence[Any] | Mapping[str, Any] | None,
    outputs: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]] | None,
    environment: Mapping[str, str] | None = None,
    working_dir: str | None = None,
    backend_type: str = "docker",
    pull_latest: bool = False,
    lineage_mode: str = "full",
    strict_mounts: bool = True,
    *,
    model: str | None = None,
    run_as_user: bool | str | None = None,
    stream_logs: bool | None = None,
    year: int | None = None,
    iteration: int | None = None,
    tags: Sequence[str] | None = None,
    timeout: float | None = None,
) -> ContainerResult:
    """Run ``command`` in ``image`` unless an identical run already produced the outputs.

    Parameters
    ----------
    tracker:
        Where the run is recorded and the outputs are stored.
    run_id:
        The id to record (a taken id becomes ``run_id~2``; earlier runs are never touched).
    image:
        Docker/Podman reference (``org/model:v1``, ``repo@sha256:...``), a ``.sif`` path,
        or ``docker://...`` for Apptainer.
    command:
        Argument list, or a string split like a shell would.
    volumes:
        Host path → container path. Relative host paths resolve against the current
        directory. With ``strict_mounts`` they must lie under the tracker's run_dir,
        project_root or mounts, and never be a system directory, a home directory or
        an engine socket.
    inputs:
        Files, directories or artifacts whose content is part of the cache key.
        (A dict gives them keys.)
    outputs:
        Host paths (key = file or directory name) or a dict key → host path; scanned
        after the container exits. A missing output is a warning.
    environment:
        Variables for the container. Part of the key as a keyed hash; values are
        never persisted.
    working_dir:
        Working directory inside the container.
    backend_type:
        ``"docker"``, ``"podman"``, ``"apptainer"`` or ``"singularity"`` (one backend,
        using whichever executable exists).
    pull_latest:
        Pull before resolving the digest, and key on what was pulled.
    lineage_mode:
        ``"full"`` records a run; ``"none"`` only runs the container and returns the
        manifest and its hash.
    strict_mounts:
        Check host paths as described above; False lifts the checks.
    model:
        The model name recorded on the run; defaults to the image name
        (``my-org/activitysim:v1.0`` → ``activitysim``).
    run_as_user:
        Run as the caller's uid:gid so outputs are not owned by root. Defaults to
        True when the caller is not root (Docker and Podman; Apptainer always
        runs as the caller). A string ``"uid"`` or ``"uid:gid"`` runs as that
        numeric user instead (Docker and Podman).
    stream_logs:
        Show the container's output live (default: ``CONSIST_CONTAINER_STREAM=1``).
        It is always kept in the run's log file.
    year, iteration, tags:
        Recorded on the run; year and iteration are part of the key.
    timeout:
        Seconds the container may run (default: ``CONSIST_CONTAINER_TIMEOUT``, else
        no limit). When it runs longer, or the caller is interrupted, the container
        is stopped and removed, and the run is recorded as failed.

    Raises
    ------
    ContainerExecutionError
        The container exited non-zero (also a ``RuntimeError``); nothing is cached.
    ContainerTimeoutError
        The container ran longer than ``timeout`` (also a ``TimeoutError``); nothing is cached.
    BackendUnavailableError, ImageNotFoundError, PathNotAllowedError
        Raised before anything runs or is recorded.
    """
    check_run_id(run_id)
    if not isinstance(image, str) or not image.strip():
        raise ConsistError(
            f"image must be an image reference or a .sif path, got {image!r}",
            None,
            'pass e.g. image="my-org/my-model:v1.0", image="repo@sha256:...", or image="model.sif"',
        )
    if lineage_mode not in ("full", "none"):
        check_option("lineage_mode", lineage_mode, ("full", "none"))
    argv = _command(command)
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    mounts = plan_mounts(tracker, volumes, strict_mounts)
    out_paths, out_written = plan_outputs(tracker, outputs, strict_mounts)
    backend = get_backend(backend_type)
    if hasattr(backend, "memo"):
        backend.memo = tracker._index  # SIF hashes go through the hash memo
    ref = backend.resolve(image, pull_latest=pull_latest)
    env_hash = environment_hash(tracker, env)
    manifest = {
        "image": image,
        "image_digest": ref.digest,
        "command": argv,
        "environment_hash": env_hash,
        "environment_keys": sorted(env),
        "working_dir": working_dir,
        "backend": backend.name,
        "container_mounts": sorted(m.container for m in mounts),
    }
    # The human tag is not hashed: two tags of one image give one manifest hash.
    manifest_hash = hash_canonical({k: v for k, v in manifest.items() if k != "image"}, "consist-container-v1")
    user = _container_user(run_as_user, backend.name)
    limit = _timeout(timeout)
    spec = ContainerSpec(ref, tuple(argv), tuple(mounts), env, working_dir, user, f"consist-{uuid.uuid4().hex[:16]}")
    stream = stream_logs if stream_logs is not None else os.environ.get("CONSIST_CONTAINER_STREAM") == "1"

    if lineage_mode == "none":
        _prepare_host_dirs(mounts)
        log_path = tracker.run_dir / ".consist" / "logs" / f"{uuid.uuid4().hex}.log"
        res = _execute(tracker, backend, spec, log_path, stream=stream, timeout=limit)
        if res.timed_out:
            raise ContainerTimeoutError(seconds=limit or 0, command=argv, image=image)
        if res.exit_code != 0:
            raise ContainerExecutionError(
                exit_code=res.exit_code, command=argv, image=image, stderr_tail=res.stderr_tail
            )
        return ContainerResult(None, False, None, {}, manifest, manifest_hash, ref.digest, log_path)

    tracker._writable(f"run the container step {run_id!r}")
    parent = tracker._stack[-1] if tracker._stack else None
    cache_mode = parent.plan.cache_mode if parent and parent.plan.cache_mode in ("overwrite", "readonly") else "reuse"
    hasher = tracker._hasher(cache_mode)
    from ..planning import _Active, _Plan, resolve_inputs

    resolved, recorded, gone = resolve_inputs(inputs, hasher, tracker._index, tracker._coupler_path, tracker._stash)
    components: dict[str, Any] = {
        "kind": "container",
        "image_digest": ref.digest,
        "command": argv,
        "environment": env_hash,
        "container_mounts": manifest["container_mounts"],
        "working_dir": working_dir,
        "backend": backend.name,
        "inputs": {k: h for k, _p, h in resolved},
        "run_fields": {"year": year, "iteration": iteration},
        "cache_epoch": tracker.cache_epoch,
    }
    plan = _Plan(
        name=run_id,
        model=model or model_from_image(image),
        components=components,
        config=canonical(manifest),
        config_hash=manifest_hash,
        inputs=resolved,
        cache_mode=cache_mode,
        year=year,
        iteration=iteration,
        hasher=hasher,
        input_artifacts=recorded,
        missing_inputs=gone,
    )
    parent_id = parent.id if parent else None

    found, waited = tracker._reuse_or_open(
        plan, out_paths, list(out_paths), run_id, run_id, parent_id, tags, {"container": manifest}
    )
    if not isinstance(found[0], _Active):
        logs.decision(run_id, plan.signature, hit_of=found[0]["id"], components=plan.components)
        rr = tracker._record_hit(plan, found, run_id, parent_id, tags, waited_for=waited)  # updates a coupler
        _attach_to_parent(tracker, parent, rr._output_rows, plan)
        hit_log = None
        if plan.cache_mode != "readonly":
            hit_log = _write_run_folder(tracker, rr._run_row, manifest, rr._output_rows, hit=True)
        return ContainerResult(
            rr.run_id, True, rr.cache_source, rr.outputs, manifest, manifest_hash, ref.digest, hit_log, [], rr
        )

    active, meta = found
    tracker._fire("start", active.row)
    tracker._materialize_inputs(plan)
    log_path = tracker.run_dir / active.id / "container.log"
    try:
        _prepare_host_dirs(mounts)
        for p in out_paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        res = _execute(tracker, backend, spec, log_path, stream=stream, timeout=limit)
        meta["container_seconds"] = round(time.time() - started, 3)
        meta["exit_code"] = res.exit_code
        if active.persist:
            _record_log(tracker, active, log_path)
        if res.timed_out:
            raise ContainerTimeoutError(seconds=limit or 0, command=argv, image=image, run_id=active.id)
        if res.exit_code != 0:
            raise ContainerExecutionError(
                exit_code=res.exit_code, command=argv, image=image, stderr_tail=res.stderr_tail, run_id=active.id
            )
        missing = []
        for key, path in out_paths.items():
            if path.exists():
                tracker._store_output(active, key, path, allow_external=not strict_mounts)
            else:
                missing.append(key)
                warnings.warn(f"Expected output not found: {out_written[key]}", ConsistWarning, stacklevel=2)
        if missing:
            meta["missing_outputs"] = missing
    except BaseException as exc:
        active.row["meta"] = dumps(meta)
        tracker._finish(active, "failed", exc)
        if active.persist:
            _write_run_folder(tracker, active.row, manifest, active.outputs, hit=False)
            _write_rerun_script(tracker.run_dir / active.id, backend, spec)
        tracker._fire("failed", active.row, exc)
        raise
    active.row["meta"] = dumps(meta)
    tracker._finish(active, "completed")
    if active.persist:
        _write_run_folder(tracker, active.row, manifest, active.outputs, hit=False)
    tracker._fire("complete", active.row, active.outputs)
    tracker._step_done(None, active.outputs)
    _attach_to_parent(tracker, parent, active.outputs, plan)
    rr = RunResult(active.id, False, None, active.row, dict(active.outputs))
    return ContainerResult(
        active.id, False, None, rr.outputs, manifest, manifest_hash, ref.digest, log_path, missing, rr
    )


def _write_run_folder(
    tracker: Tracker, row: Mapping[str, Any], manifest: Mapping[str, Any], outputs: Mapping[str, Any], *, hit: bool
) -> Path | None:
    """``run_dir/<run_id>/``: the container log and a small run record, for executed runs and hits alike.

    A hit's folder gets the log of the run that executed, from the object store.
    Returns the log's path (None when a hit's log cannot be had).
    """
    import json

    folder = tracker.run_dir / row["id"]
    folder.mkdir(parents=True, exist_ok=True)
    log_path: Path | None = folder / "container.log"
    if hit:
        log_path = _restore_producer_log(tracker, row.get("cache_source"), folder / "container.log")
    record = {
        "run_id": row["id"],
        "status": row["status"],
        "cache_hit": bool(row.get("cache_hit")),
        "cache_source": row.get("cache_source"),
        "signature": row.get("signature"),
        "image": manifest.get("image"),
        "image_digest": manifest.get("image_digest"),
        "command": manifest.get("command"),
        "outputs": {k: o.get("location") or o.get("uri") for k, o in outputs.items()},
        "error": row.get("error"),
    }
    tmp = folder / f".run.json.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, folder / "run.json")
    return log_path


def _write_rerun_script(folder: Path, backend: Any, spec: ContainerSpec) -> None:
    """``run_dir/<run_id>/command.sh`` of a failed run: the same engine command, to run it by hand."""
    try:
        script = backend.rerun_script(spec)
    except Exception:  # best effort: the run's own error is what the caller needs to see
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".command.sh.{uuid.uuid4().hex}"
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, folder / "command.sh")


def _restore_producer_log(tracker: Tracker, producer: str | None, dest: Path) -> Path | None:
    from ..errors import IntegrityError

    logs = [r for r in tracker._index.links_of(producer, "log")] if producer else []
    if not logs:
        return None
    log = logs[0]
    try:
        store = tracker._store_for(log["hash"])
        store.write(store.check("file", log["hash"], log["size"]), dest)
    except (IntegrityError, OSError):
        return None
    return dest


def _execute(
    tracker: Tracker, backend: Any, spec: ContainerSpec, log_path: Path, *, stream: bool, timeout: float | None
) -> Any:
    """Run the container with host paths an engine cannot parse staged behind plain-named links."""
    from ..progress import ContainerStatus

    staging = mounts_mod.Staging(tracker.run_dir / ".consist" / "staging")
    try:
        staged = dataclasses.replace(spec, mounts=tuple(staging.apply(spec.mounts)))
        # Streamed output is its own progress; otherwise a long run shows a status line on a terminal.
        with ContainerStatus(f"{spec.image.run_ref}", enabled=not stream) as status:
            on_line = status.line if status.active else None
            return backend.run(staged, log_path, stream=stream, timeout=timeout, on_line=on_line)
    finally:
        staging.cleanup()


def _container_user(run_as_user: bool | str | None, backend: str) -> str | None:
    """The ``--user`` value for the engine, or None for the image's default user."""
    if isinstance(run_as_user, str):
        parts = run_as_user.split(":")
        if not (1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() for p in parts)):
            raise ConsistError(
                f"run_as_user={run_as_user!r} is not a numeric user", None, 'pass True, False, "1000" or "1000:1000"'
            )
        if backend == "apptainer":
            raise ConsistError(
                "Apptainer always runs containers as the calling user",
                "run_as_user names another user",
                "run the tracker as that user, or use backend_type='docker' or 'podman'",
            )
        return run_as_user
    if run_as_user is None:
        run_as_user = os.getuid() != 0
    if run_as_user and backend != "apptainer":
        return f"{os.getuid()}:{os.getgid()}"
    return None


def _timeout(value: float | None) -> float | None:
    """The container time limit: the argument, else CONSIST_CONTAINER_TIMEOUT, else none."""
    if value is None:
        raw = os.environ.get("CONSIST_CONTAINER_TIMEOUT", "").strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ConsistError(
                f"CONSIST_CONTAINER_TIMEOUT={raw!r} is not a number of seconds",
                None,
                "set it to e.g. 3600, or unset it",
            ) from None
    if not value > 0:
        raise ConsistError(f"timeout={value!r} must be a positive number of seconds", None, "pass e.g. timeout=3600")
    return float(value)


def _prepare_host_dirs(mounts: Sequence[Mount]) -> None:
    """Create missing host directories (as the caller, so the engine does not create them as root)."""
    for m in mounts:
        if not m.host.exists():
            if Path(m.container).suffix and not m.host.suffix == "":
                continue
            m.host.mkdir(parents=True, exist_ok=True)


def _record_log(tracker: Tracker, active: Any, log_path: Path) -> None:
    if not log_path.exists():
        return
    from ..hashing import FileHasher

    digest, size = tracker._objects.put_file(log_path, FileHasher(tracker._index))
    tracker._index.add_object(digest, str(tracker._objects.root), size)
    row = {
        "id": uuid.uuid4().hex, "key": "container.log", "uri": str(log_path), "hash": digest, "size": size,
        "kind": "file", "driver": "text", "run_id": active.id, "created_at": time.time(), "meta": None,
        "location": tracker.roots.locate(log_path.resolve()),
    }  # fmt: skip

    def record() -> None:
        tracker._index.add_artifact(row)
        tracker._index.link(active.id, row["id"], "log", "container.log")

    tracker._index.atomic(record)


def _attach_to_parent(tracker: Tracker, parent: Any, outputs: Mapping[str, dict[str, Any]], plan: Any) -> None:
    """Inside an active run, the container's inputs and outputs are that run's too.

    An input key the outer run already has keeps its artifact. Scenario headers
    collect their steps' artifacts themselves (see :mod:`consist.scenarios`).
    """
    if parent is None or parent.scenario is not None:
        return
    for key, row in outputs.items():
        parent.outputs[key] = row  # linked when the parent run finishes
    if parent.persist and plan.inputs:
        have = {r["link_key"] for r in tracker._index.links_of(parent.id, "input")}
        new = [entry for entry in plan.inputs if entry[0] not in have]
        if new:
            sub = dataclasses.replace(plan, inputs=new)
            tracker._index.atomic(lambda: tracker._link_inputs(parent.id, sub))


__all__ = ["ContainerError", "ContainerResult", "run_container"]
