"""What makes two runs "the same": code identity, signatures and miss explanations.

A run's signature is the SHA-256 of named components, stored next to the
signature so that any miss can be explained component by component:

- ``code``: the git commit of ``project_root`` (plus ``-dirty-<hash>`` for
  uncommitted changes to tracked files), or, outside git, the hash of the
  source file that defines the function. ``code_version=`` pins it by hand.
- ``config``: the hash of the canonical config (see :func:`consist.hashing.canonical`).
- ``inputs``: the content hash of every input, by name (host paths excluded).
- ``run_fields``: model, year, iteration.
- ``cache_epoch``: bump it on the Tracker to invalidate everything at once.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .hashing import FileHasher, NullMemo, hash_canonical, sha256_bytes

SIGNATURE_FORMAT = "consist-signature-v1"


def make_signature(components: Mapping[str, Any]) -> str:
    """The run signature: SHA-256 over the canonical, tagged components."""
    return hash_canonical(dict(components), SIGNATURE_FORMAT)


# --------------------------------------------------------------------- code identity


class _GitProbe:
    """Git commit + dirty suffix of a checkout, cached until HEAD, the index or a tracked file changes.

    The dirty suffix covers every tracked file, so the cache is keyed on the
    (mtime, size, inode) of each of them too: an unstaged edit to any tracked
    file (a helper module, an R script, a config) changes the identity at the
    next call. That costs one ``stat`` per tracked file per call (about 1 µs each).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fingerprint: tuple[Any, ...] | None = None
        self._value: str | None = None
        self._lock = threading.Lock()
        self.git_dir = self._find_git_dir(root)
        self._tracked: tuple[tuple[Any, ...], list[str]] | None = None  # (index stamp, absolute paths)

    @staticmethod
    def _find_git_dir(root: Path) -> Path | None:
        for d in (root, *root.parents):
            g = d / ".git"
            if g.is_dir():
                return g
            if g.is_file():  # worktree or submodule: "gitdir: <path>"
                text = g.read_text().strip()
                if text.startswith("gitdir:"):
                    return (d / text.split(":", 1)[1].strip()).resolve()
        return None

    def _fp(self, extra: tuple[Any, ...]) -> tuple[Any, ...]:
        assert self.git_dir is not None
        out: list[Any] = []
        for name in ("HEAD", "index"):
            try:
                st = (self.git_dir / name).stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return (*out, *extra, *self._tracked_stats(tuple(out)))

    def _tracked_stats(self, index_stamp: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._tracked is None or self._tracked[0] != index_stamp:
            listing = self._git("ls-files", "-z", "--full-name")
            top = self._git("rev-parse", "--show-toplevel")
            if listing is None or top is None:
                self._tracked = (index_stamp, [])
            else:
                base = top.decode().strip()
                names = [os.path.join(base, n.decode(errors="surrogateescape")) for n in listing.split(b"\0") if n]
                self._tracked = (index_stamp, names)
        stats: list[Any] = []
        for name in self._tracked[1]:
            try:
                st = os.lstat(name)
                stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def version(self, watched: tuple[Any, ...] = ()) -> str | None:
        """The code version, or None when git cannot tell (not a repo, no commit, no git)."""
        if self.git_dir is None:
            return None
        with self._lock:
            fp = self._fp(watched)
            if fp == self._fingerprint:
                return self._value
            self._value = self._compute()
            self._fingerprint = fp
            return self._value

    def _git(self, *args: str) -> bytes | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(self.root), *args],
                capture_output=True,
                timeout=30,
                check=False,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def _compute(self) -> str | None:
        head = self._git("rev-parse", "HEAD")
        if not head:
            return None
        commit = head.decode().strip()
        diff = self._git("diff", "HEAD", "--no-ext-diff", "--binary")
        if diff:
            return f"git:{commit}-dirty-{sha256_bytes(diff).split(':')[1][:12]}"
        return f"git:{commit}"


_PROBES: dict[Path, _GitProbe] = {}
_FN_CACHE: dict[Any, tuple[tuple[Any, ...], str]] = {}


def _source_file(fn: Callable[..., Any]) -> Path | None:
    fn = inspect.unwrap(fn)
    try:
        src = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return Path(src) if src and os.path.exists(src) else None


def _file_stat(path: Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def _code_fingerprint(code: Any) -> bytes:
    """Bytes that identify a code object's behaviour, stable across calls and processes.

    ``marshal.dumps`` is not: its output depends on reference counts, and the order
    of a frozenset constant depends on string hash randomisation. Line numbers and
    the file name are left out, so moving a function does not change its identity.
    """
    parts: list[bytes] = [code.co_code]
    for field in ("co_name", "co_names", "co_varnames", "co_freevars", "co_cellvars"):
        parts.append(repr(getattr(code, field)).encode())
    for field in ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_flags"):
        parts.append(str(getattr(code, field)).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            parts.append(b"code:" + _code_fingerprint(const))
        elif isinstance(const, frozenset):
            parts.append(b"frozenset:" + repr(sorted(map(repr, const))).encode())
        else:
            parts.append(f"{type(const).__name__}:{const!r}".encode())
    return b"\x00".join(parts)


def code_identity(fn: Callable[..., Any] | None, project_root: Path, source: Path | None = None) -> str:
    """The code version of a function (or of a source file when ``fn`` is None).

    Never fails: git, then the defining module's source, then the compiled code object.
    """
    if source is None and fn is not None:
        source = _source_file(fn)
    watched = _file_stat(source)
    probe = _PROBES.get(project_root)
    if probe is None:
        probe = _PROBES[project_root] = _GitProbe(project_root)
    version = probe.version(watched)
    if version:
        return version
    if source is not None:
        cached = _FN_CACHE.get(source)
        if cached and cached[0] == watched:
            return cached[1]
        digest = FileHasher(NullMemo()).hash_file(source)
        value = f"module:{digest.split(':')[1][:32]}"
        _FN_CACHE[source] = (watched, value)
        return value
    if fn is not None:
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if code is not None:
            return f"code:{sha256_bytes(_code_fingerprint(code)).split(':')[1][:32]}"
    return "unknown"


def caller_source() -> Path | None:
    """The source file of the first stack frame outside consist (for begin_run/trace)."""
    pkg = str(Path(__file__).parent)
    frame = sys._getframe(1)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not fname.startswith(pkg) and not fname.startswith("<") and "contextlib" not in fname:
            return Path(fname) if os.path.exists(fname) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


# --------------------------------------------------------------------- explanations


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix or "<config>": value}


def frozen(value: Any) -> Any:
    """A hashable value equal to another's ``frozen`` exactly when the two JSON-like values are equal."""
    if isinstance(value, dict):
        return frozenset((k, frozen(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def identity_items(ident: Mapping[str, Any]) -> tuple[frozenset[Any], frozenset[str]]:
    """An identity's ``(key, frozen value)`` pairs and its keys: what :func:`explain_miss` compares."""
    return frozenset((k, frozen(v)) for k, v in ident.items()), frozenset(ident)


def explain_miss(
    components: Mapping[str, Any],
    config: Any,
    candidates: list[dict[str, Any]],
    *,
    loads: Callable[[str], Any],
    items: Callable[[str], tuple[frozenset[Any], frozenset[str]]] | None = None,
    config_of: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Compare a new run's components with its nearest prior run of the same model.

    ``candidates`` are index rows (with JSON ``identity`` and ``config``). The nearest
    is the one with the most equal components (a component it lacks equals one that
    is None), the newest on ties. ``items`` gives :func:`identity_items` of an
    identity's JSON text (a caller may remember them); by default they come from ``loads``.
    ``config_of`` gives the recorded config (JSON text) of a candidate read without one.
    """
    if not candidates:
        return {"reason": "no_prior_run", "changed": [], "details": {}}
    items = items or (lambda text: identity_items(loads(text)))
    mine = identity_items(components)[0]
    unset = [k for k, v in components.items() if v is None]
    best, best_score, best_text = None, -1, None
    for row in candidates:
        text = row.get("identity")
        theirs, keys = items(text) if text else (frozenset(), frozenset())
        # Equal pairs, compared as sets; a component that is None also equals one the run lacks.
        score = len(mine & theirs) + sum(1 for k in unset if k not in keys)
        if score > best_score:
            best, best_score, best_text = row, score, text
    assert best is not None
    best_ident = loads(best_text) if best_text else {}
    changed = sorted(k for k in set(components) | set(best_ident) if components.get(k) != best_ident.get(k))
    details: dict[str, Any] = {}
    if "code" in changed:
        details["code"] = {"before": best_ident.get("code"), "after": components.get("code")}
    if "config" in changed:
        text = best["config"] if "config" in best or config_of is None else config_of(best["id"])
        old = _flatten(loads(text) if text else {})
        new = _flatten(config if config is not None else {})
        details["config_keys_changed"] = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if "inputs" in changed:
        old_in = best_ident.get("inputs") or {}
        new_in = components.get("inputs") or {}
        details["inputs_changed"] = sorted(k for k in set(old_in) & set(new_in) if old_in[k] != new_in[k])
        details["inputs_added"] = sorted(set(new_in) - set(old_in))
        details["inputs_removed"] = sorted(set(old_in) - set(new_in))
    for key in changed:
        if key not in ("code", "config", "inputs"):
            details[key] = {"before": best_ident.get(key), "after": components.get(key)}
    reason = f"{changed[0]}_changed" if len(changed) == 1 else "several_changed" if changed else "identical"
    return {"reason": reason, "changed": changed, "nearest_run": best["id"], "details": details}
