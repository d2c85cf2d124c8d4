"""Guarantees of consist.identity: signatures, code identity and miss explanations.

Code identity decides whether a run can be reused after the code changed; miss
explanations tell the user why it was not. Tests build real git checkouts and real
module files; explanations are computed from index-shaped rows.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import textwrap
import time
import types
from pathlib import Path

import pytest

from consist import identity as I
from consist.hashing import hash_canonical


def sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def make_repo(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "t")
    (root / "model.py").write_text("x = 1\n")
    commit_all(root, "one")
    return git(root, "rev-parse", "HEAD").strip()


def commit_all(root: Path, message: str) -> None:
    """Commit every file, dated in the past so that git never has to refresh its index later."""
    past = time.time() - 60
    for f in root.rglob("*"):
        if ".git" not in f.parts and f.is_file():
            os.utime(f, (past, past))
    git(root, "add", ".")
    git(root, "commit", "-qm", message)


def load_module(path: Path, source: str) -> types.ModuleType:
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"gmod_{sha_hex(str(path).encode())[:8]}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------- signatures


def test_signature_is_sha256_of_tagged_canonical_components() -> None:
    components = {"b": {"y": 1, "x": 2}, "a": "v"}
    text = '{"a":"v","b":{"x":2,"y":1}}'
    expected = "sha256:" + sha_hex(b"consist-signature-v1\x00" + text.encode())
    assert I.make_signature(components) == expected
    assert I.make_signature(components) == hash_canonical(components, "consist-signature-v1")


# --------------------------------------------------------------------- code identity: git


def test_clean_and_dirty_git_identity(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    probe = I._GitProbe(repo)
    assert probe.git_dir == repo / ".git"
    assert probe.version() == f"git:{head}"
    (repo / "model.py").write_text("x = 2\n")
    git(repo, "add", ".")
    diff = subprocess.run(
        ["git", "-C", str(repo), "diff", "HEAD", "--no-ext-diff", "--binary"], check=True, capture_output=True
    ).stdout
    assert probe.version() == f"git:{head}-dirty-{sha_hex(diff)[:12]}"


def test_identity_follows_new_commits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = make_repo(repo)
    probe = I._GitProbe(repo)
    assert probe.version() == f"git:{first}"
    (repo / "model.py").write_text("x = 3\n")
    git(repo, "commit", "-qam", "two")
    second = git(repo, "rev-parse", "HEAD").strip()
    assert second != first and probe.version() == f"git:{second}"


def test_an_unchanged_checkout_is_not_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    probe = I._GitProbe(repo)
    watched = I._file_stat(repo / "model.py")
    assert probe.version(watched) == f"git:{head}"
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # git can no longer run
    assert probe.version(watched) == f"git:{head}"
    assert probe._git("rev-parse", "HEAD") is None


def test_a_watched_file_change_asks_git_again(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    probe = I._GitProbe(repo)
    assert probe.version(I._file_stat(repo / "model.py")) == f"git:{head}"
    (repo / "model.py").write_text("x = 22\n")  # not staged: HEAD and the index are unchanged
    assert probe.version(I._file_stat(repo / "model.py")).startswith(f"git:{head}-dirty-")


def test_git_without_a_commit_falls_back_to_the_module_hash(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    mod = load_module(repo / "step.py", "def step():\n    return 1\n")
    assert I._GitProbe(repo).version() is None
    ident = I.code_identity(mod.step, repo)
    assert ident == "module:" + sha_hex((repo / "step.py").read_bytes())[:32]


def test_git_file_pointing_to_the_git_dir(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    tree = tmp_path / "tree"
    git(repo, "worktree", "add", "-q", str(tree))
    probe = I._GitProbe(tree)
    assert probe.git_dir is not None and probe.git_dir.is_dir()
    assert probe.git_dir.resolve() == (repo / ".git" / "worktrees" / "tree").resolve()
    assert probe.version() == f"git:{head}"
    relative = tmp_path / "rel"
    relative.mkdir()
    (relative / ".git").write_text("gitdir: ../repo/.git\n")
    assert I._GitProbe._find_git_dir(relative) == (repo / ".git").resolve()
    (relative / ".git").write_text("not a pointer\n")
    assert I._GitProbe._find_git_dir(relative) is None
    assert I._GitProbe(relative).version() is None


def test_git_dir_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    (repo / "src" / "pkg").mkdir(parents=True)
    probe = I._GitProbe(repo / "src" / "pkg")
    assert probe.git_dir == repo / ".git"
    assert probe.version() == f"git:{head}"


# --------------------------------------------------------------------- code identity: outside git


def test_module_identity_is_the_hash_of_the_defining_file_and_follows_edits(tmp_path: Path) -> None:
    mod = load_module(tmp_path / "steps_a.py", "def step():\n    return 1\n")
    expected = "module:" + sha_hex((tmp_path / "steps_a.py").read_bytes())[:32]
    assert I.code_identity(mod.step, tmp_path) == expected
    assert I.code_identity(None, tmp_path, source=tmp_path / "steps_a.py") == expected
    (tmp_path / "steps_a.py").write_text("def step():\n    return 12\n")
    changed = I.code_identity(mod.step, tmp_path)
    assert changed == "module:" + sha_hex((tmp_path / "steps_a.py").read_bytes())[:32] != expected


def test_decorated_functions_are_identified_by_their_own_module(tmp_path: Path) -> None:
    mod = load_module(tmp_path / "steps_b.py", "def step():\n    return 1\n")

    @functools.wraps(mod.step)
    def wrapper() -> object:
        return mod.step()

    assert I._source_file(wrapper) == tmp_path / "steps_b.py"
    assert I.code_identity(wrapper, tmp_path) == I.code_identity(mod.step, tmp_path)


def test_functions_without_a_source_file() -> None:
    assert I._source_file(len) is None
    ns: dict[str, object] = {}
    exec(compile("def f(a, b=2):\n    return a + b\n", "<cell>", "exec"), ns)
    f = ns["f"]
    assert I._source_file(f) is None
    expected = "code:" + sha_hex(I._code_fingerprint(f.__code__))[:32]
    assert I.code_identity(f, Path("/nonexistent-root")) == expected
    assert I.code_identity(None, Path("/nonexistent-root")) == "unknown"
    assert I.code_identity(len, Path("/nonexistent-root")) == "unknown"


def test_file_stat_watches_path_mtime_size_and_inode(tmp_path: Path) -> None:
    f = tmp_path / "w.py"
    f.write_text("a")
    st = f.stat()
    assert I._file_stat(f) == (str(f), st.st_mtime_ns, st.st_size, st.st_ino)
    assert I._file_stat(None) == ()


def _compiled(src: str, filename: str = "<cell>") -> types.CodeType:
    ns: dict[str, object] = {}
    exec(compile(src, filename, "exec"), ns)
    return ns["f"].__code__  # type: ignore[attr-defined]


def test_code_fingerprint_ignores_location_but_not_behaviour() -> None:
    base = _compiled("def f(a):\n    return a + 1\n")
    assert I._code_fingerprint(base) == I._code_fingerprint(_compiled("\n\n\ndef f(a):\n    return a + 1\n", "<x>"))
    variants = [
        "def f(a):\n    return a + 2\n",  # constant
        "def f(a):\n    return a - 1\n",  # bytecode
        "def f(b):\n    return b + 1\n",  # variable names
        "def f(a, /):\n    return a + 1\n",  # positional-only
        "def f(*, a):\n    return a + 1\n",  # keyword-only
        "def f(a, c=0):\n    return a + 1\n",  # argument count
        "def f(a):\n    return a + len([])\n",  # global names
        "def f(a):\n    return a + 1.0\n",  # constant type (1 == 1.0)
        "def f(a):\n    def g():\n        return a\n    return g\n",  # nested code, cell variables
    ]
    prints = {I._code_fingerprint(_compiled(v)) for v in variants}
    assert len(prints) == len(variants) and I._code_fingerprint(base) not in prints
    g_one = _compiled("def f(a):\n    def g():\n        return a + 1\n    return g\n")
    g_two = _compiled("def f(a):\n    def g():\n        return a + 2\n    return g\n")
    assert I._code_fingerprint(g_one) != I._code_fingerprint(g_two)
    inner = next(c for c in g_one.co_consts if isinstance(c, types.CodeType))
    assert I._code_fingerprint(inner) != I._code_fingerprint(inner.replace(co_freevars=("b",)))
    assert I._code_fingerprint(base) != I._code_fingerprint(base.replace(co_flags=base.co_flags ^ 0x20))
    assert I._code_fingerprint(base) != I._code_fingerprint(base.replace(co_name="h"))


def test_code_fingerprint_of_a_frozenset_constant_ignores_its_iteration_order() -> None:
    code = _compiled("def f(a):\n    return a in {'p', 'q', 'r'}\n")
    fs = next(c for c in code.co_consts if isinstance(c, frozenset))
    # Find two frozensets with equal elements that iterate in different orders (hash collisions).
    words = [f"w{i}" for i in range(64)]
    one, two = frozenset(words), frozenset(reversed(words))
    for n in range(64, 2000):
        if list(one) != list(two):
            break
        words.append(f"w{n}")
        one, two = frozenset(words), frozenset(reversed(words))
    assert one == two and list(one) != list(two)
    a = code.replace(co_consts=tuple(one if c is fs else c for c in code.co_consts))
    b = code.replace(co_consts=tuple(two if c is fs else c for c in code.co_consts))
    assert I._code_fingerprint(a) == I._code_fingerprint(b)
    c = code.replace(co_consts=tuple(frozenset(words[1:]) if x is fs else x for x in code.co_consts))
    assert I._code_fingerprint(c) != I._code_fingerprint(a)


def test_caller_source_is_the_first_frame_outside_consist() -> None:
    found = I.caller_source()
    assert found is not None and found.exists()
    assert not found.resolve().is_relative_to(Path(I.__file__).resolve().parent)


# --------------------------------------------------------------------- miss explanations


def row(run_id: str, identity: dict | None, config: dict | None = None) -> dict:
    return {
        "id": run_id,
        "identity": json.dumps(identity) if identity is not None else None,
        "config": json.dumps(config) if config is not None else None,
    }


COMPONENTS = {
    "code": "git:abc",
    "config": "sha256:c1",
    "inputs": {"households": "sha256:h1", "zones": "sha256:z1"},
    "run_fields": {"model": "m", "year": 2030, "iteration": None},
    "cache_epoch": 1,
}


def test_no_prior_run() -> None:
    assert I.explain_miss(COMPONENTS, {}, [], loads=json.loads) == {
        "reason": "no_prior_run",
        "changed": [],
        "details": {},
    }


def test_identical_components_explain_as_identical() -> None:
    expl = I.explain_miss(COMPONENTS, {"a": 1}, [row("r1", COMPONENTS, {"a": 1})], loads=json.loads)
    assert expl == {"reason": "identical", "changed": [], "nearest_run": "r1", "details": {}}


def test_nearest_run_has_most_equal_components_newest_first_on_ties() -> None:
    far = {**COMPONENTS, "code": "git:old", "config": "sha256:old", "cache_epoch": 0}
    near_new = {**COMPONENTS, "code": "git:new"}
    near_old = {**COMPONENTS, "config": "sha256:c0"}
    candidates = [row("far", far), row("near-new", near_new), row("near-old", near_old), row("blank", None)]
    expl = I.explain_miss(COMPONENTS, None, candidates, loads=json.loads)
    assert expl["nearest_run"] == "near-new"
    assert expl["reason"] == "code_changed" and expl["changed"] == ["code"]
    assert expl["details"] == {"code": {"before": "git:new", "after": "git:abc"}}
    assert I.explain_miss(COMPONENTS, None, [row("blank", None)], loads=json.loads)["nearest_run"] == "blank"


def _nearest_by_the_rule(components: dict, candidates: list[dict]) -> str:
    """The documented rule, written plainly: most components equal (absent = None), the first on ties."""
    best, best_score = "", -1
    for cand in candidates:
        ident = json.loads(cand["identity"]) if cand["identity"] else {}
        score = sum(1 for k, v in components.items() if ident.get(k) == v)
        if score > best_score:
            best, best_score = cand["id"], score
    return best


def test_the_nearest_run_follows_the_rule_for_any_components() -> None:
    """Compared as sets of frozen pairs, the nearest run is the one the plain rule picks, for
    nested, reordered, None, absent and differently typed components."""
    rng = random.Random(7)
    values = [None, 0, 1, 1.0, True, "a", "b", [], [1, 2], [2, 1], {}, {"x": 1}, {"x": 1.0}, {"x": [1]},
              {"x": 1, "y": None}, {"y": None, "x": 1}, [["x", 1]], {"x": {"z": 2}}]  # fmt: skip
    keys = ["code", "config", "run_fields", "cache_epoch", "extra", "other"]  # "inputs" is always a dict

    def ident() -> dict:
        return {k: rng.choice(values) for k in keys if rng.random() < 0.8}

    for trial in range(400):
        mine = ident()
        candidates = [row(f"r{trial}-{i}", ident() if rng.random() < 0.9 else None) for i in range(rng.randint(1, 8))]
        got = I.explain_miss(mine, None, candidates, loads=json.loads)["nearest_run"]
        assert got == _nearest_by_the_rule(mine, candidates), (mine, candidates)


def test_frozen_values_are_equal_exactly_when_the_values_are() -> None:
    assert I.frozen({"a": {"b": [1, 2]}, "c": None}) == I.frozen({"c": None, "a": {"b": [1, 2]}})
    assert I.frozen({"a": 1}) != I.frozen([["a", 1]]) and I.frozen([1, 2]) != I.frozen([2, 1])
    assert I.frozen({"a": [1]}) != I.frozen({"a": 1}) and I.frozen({}) != I.frozen([])
    assert I.identity_items({"a": None}) == (frozenset({("a", None)}), frozenset({"a"}))


def test_remembered_items_give_the_same_explanation() -> None:
    candidates = [row("r1", {**COMPONENTS, "code": "git:x"}), row("r2", {**COMPONENTS, "config": "sha256:y"})]
    seen: list[str] = []

    def items(text: str) -> tuple[frozenset, frozenset]:
        seen.append(text)
        return I.identity_items(json.loads(text))

    plain = I.explain_miss(COMPONENTS, None, candidates, loads=json.loads)
    assert I.explain_miss(COMPONENTS, None, candidates, loads=json.loads, items=items) == plain
    assert seen == [c["identity"] for c in candidates] and plain["nearest_run"] == "r1"


def test_config_explanation_lists_changed_dotted_keys() -> None:
    old_config = {"a": 1, "nested": {"b": 2, "c": 3}, "gone": True, "empty": {}}
    new_config = {"a": 1, "nested": {"b": 20, "c": 3}, "new": 5, "empty": {"now": 1}}
    before = {**COMPONENTS, "config": "sha256:c0"}
    expl = I.explain_miss(COMPONENTS, new_config, [row("r1", before, old_config)], loads=json.loads)
    assert expl["reason"] == "config_changed"
    assert expl["details"] == {"config_keys_changed": ["empty", "empty.now", "gone", "nested.b", "new"]}


def test_the_config_of_the_nearest_run_alone_is_fetched_when_candidates_lack_it() -> None:
    before = {**COMPONENTS, "config": "sha256:c0"}
    far = {**COMPONENTS, "config": "sha256:c0", "code": "git:old"}
    fetched: list[str] = []

    def config_of(run_id: str) -> str | None:
        fetched.append(run_id)
        return json.dumps({"a": 1, "b": 2}) if run_id == "near" else None

    slim = [{"id": "far", "identity": json.dumps(far)}, {"id": "near", "identity": json.dumps(before)}]
    expl = I.explain_miss(COMPONENTS, {"a": 1, "b": 3}, slim, loads=json.loads, config_of=config_of)
    assert fetched == ["near"] and expl["details"] == {"config_keys_changed": ["b"]}
    fetched.clear()
    assert I.explain_miss({**before, "code": "git:x"}, None, slim, loads=json.loads, config_of=config_of)
    assert fetched == []  # the config did not change: nothing fetched


def test_config_explanation_with_missing_or_scalar_configs() -> None:
    before = {**COMPONENTS, "config": "sha256:c0"}
    expl = I.explain_miss(COMPONENTS, {"a": 1}, [row("r1", before, None)], loads=json.loads)
    assert expl["details"]["config_keys_changed"] == ["a"]
    expl = I.explain_miss(COMPONENTS, None, [row("r1", before, {"a": 1})], loads=json.loads)
    assert expl["details"]["config_keys_changed"] == ["a"]
    assert I._flatten(7) == {"<config>": 7}
    assert I._flatten({}) == {}
    assert I._flatten({"a": {"b": {}}}) == {"a.b": {}}
    assert I._flatten({1: {2: "x"}}) == {"1.2": "x"}


def test_input_explanation_separates_changed_added_and_removed() -> None:
    before = {**COMPONENTS, "inputs": {"households": "sha256:h0", "zones": "sha256:z1", "old": "sha256:o"}}
    now = {**COMPONENTS, "inputs": {"households": "sha256:h1", "zones": "sha256:z1", "extra": "sha256:e"}}
    expl = I.explain_miss(now, None, [row("r1", before)], loads=json.loads)
    assert expl["reason"] == "inputs_changed"
    assert expl["details"] == {"inputs_changed": ["households"], "inputs_added": ["extra"], "inputs_removed": ["old"]}
    no_inputs = {k: v for k, v in before.items() if k != "inputs"}
    expl = I.explain_miss(now, None, [row("r1", no_inputs)], loads=json.loads)
    assert expl["details"]["inputs_added"] == ["extra", "households", "zones"]
    assert expl["details"]["inputs_removed"] == [] and expl["details"]["inputs_changed"] == []


def test_several_changes_and_other_components() -> None:
    before = {**COMPONENTS, "cache_epoch": 0, "run_fields": {"model": "m", "year": 2020, "iteration": None}}
    before["retired"] = "x"
    expl = I.explain_miss(COMPONENTS, None, [row("r1", before)], loads=json.loads)
    assert expl["reason"] == "several_changed"
    assert expl["changed"] == ["cache_epoch", "retired", "run_fields"]
    assert expl["details"] == {
        "cache_epoch": {"before": 0, "after": 1},
        "retired": {"before": "x", "after": None},
        "run_fields": {"before": before["run_fields"], "after": COMPONENTS["run_fields"]},
    }


# --------------------------------------------------------------------- more code identity


def test_an_external_diff_driver_cannot_hide_changes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    driver = tmp_path / "constant-diff.sh"
    driver.write_text("#!/bin/sh\necho same-for-every-change\n")
    driver.chmod(0o755)
    git(repo, "config", "diff.external", str(driver))
    seen = set()
    for content in ("x = 10\n", "x = 20\n"):
        (repo / "model.py").write_text(content)
        git(repo, "add", ".")
        version = I._GitProbe(repo).version()
        assert version is not None and version.startswith(f"git:{head}-dirty-")
        seen.add(version)
    assert len(seen) == 2


def test_binary_changes_change_the_identity(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    (repo / "weights.bin").write_bytes(b"\x00\x01\x02" * 100)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "weights")
    seen = set()
    for tail in (b"\x00A", b"\x00B"):
        (repo / "weights.bin").write_bytes(b"\x00\x01\x02" * 99 + tail)
        git(repo, "add", ".")
        seen.add(I._GitProbe(repo).version())
    assert len(seen) == 2


def test_switching_head_alone_is_noticed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = make_repo(repo)
    git(repo, "branch", "other")
    git(repo, "commit", "-q", "--allow-empty", "-m", "empty")  # same tree: the index is not rewritten
    second = git(repo, "rev-parse", "HEAD").strip()
    probe = I._GitProbe(repo)
    assert probe.version() == f"git:{second}"
    git(repo, "symbolic-ref", "HEAD", "refs/heads/other")  # rewrites .git/HEAD only
    assert probe.version() == f"git:{first}"


def test_an_unstaged_edit_to_a_helper_module_changes_the_identity(tmp_path: Path, make_tracker) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    (repo / "helper.py").write_text("FACTOR = 1\n")
    mod = load_module(repo / "step.py", "def step():\n    return None\n")
    commit_all(repo, "step and helper")
    t = make_tracker(project_root=repo)
    first = t.run(mod.step, name="s")
    (repo / "helper.py").write_text("FACTOR = 2\n")  # tracked, not staged: the code changed
    second = t.run(mod.step, name="s")
    assert first.run.code_version != second.run.code_version
    assert not second.cache_hit


def test_fingerprint_layout_is_stable() -> None:
    code = _compiled("def f(a):\n    def g():\n        return a in {'p', 'q'}\n    return g, 1, 'one'\n")
    fp = I._code_fingerprint(code)
    head = [code.co_code, repr(code.co_name).encode(), repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    assert fp.startswith(b"\x00".join(head) + b"\x00")
    inner = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    assert b"\x00code:" + I._code_fingerprint(inner) in fp
    assert b"\x00frozenset:" + repr(["'p'", "'q'"]).encode() in I._code_fingerprint(inner)
    assert b"\x00int:1" in fp and b"\x00str:'one'" in fp
    again = _compiled("\n\n\ndef f(a):\n    def g():\n        return a in {'q', 'p'}\n    return g, 1, 'one'\n", "<y>")
    assert I._code_fingerprint(again) == fp  # another compilation, other lines, other file: same identity


# mutmut puts a trampoline frame (in mutmut's own package) between every caller and every
# function of a mutated module, so a test of "who called me" can only run outside it.
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


@pytest.mark.skipif(UNDER_MUTMUT, reason="mutmut's trampolines are the callers of every mutated function")
def test_caller_source_names_the_calling_file(make_tracker) -> None:
    assert I.caller_source() == Path(__file__)
    ns: dict[str, object] = {}
    code = "from consist.identity import caller_source\nresult = caller_source()\n"
    exec(compile(code, "<stdin>", "exec"), ns)  # a frame with no file is skipped: this file called exec
    assert ns["result"] == Path(__file__)
    import contextlib

    exec(compile(code, contextlib.__file__, "exec"), ns)  # contextlib's frames (a `with` block) are skipped
    assert ns["result"] == Path(__file__)
    exec(compile(code, "/nonexistent/script.py", "exec"), ns)  # a first frame whose file is gone: no source
    assert ns["result"] is None
    t = make_tracker()
    run = t.begin_run("manual", "m")
    t.end_run()
    assert run.code_version == "module:" + sha_hex(Path(__file__).read_bytes())[:32]


# --------------------------------------------------------------------- what the git probe watches


def test_a_newly_tracked_file_is_watched_once_committed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    probe = I._GitProbe(repo)
    probe.version()
    (repo / "helper2.py").write_text("y = 1\n")
    commit_all(repo, "helper")
    committed = probe.version()
    assert committed == f"git:{git(repo, 'rev-parse', 'HEAD').strip()}"
    (repo / "helper2.py").write_text("y = 22\n")  # not staged
    assert probe.version().startswith(committed + "-dirty-")


def test_unstaging_a_file_is_noticed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    head = make_repo(repo)
    probe = I._GitProbe(repo)
    assert probe.version() == f"git:{head}"
    git(repo, "rm", "-q", "--cached", "model.py")  # the index changes, the file does not
    assert probe.version().startswith(f"git:{head}-dirty-")


def test_a_project_root_below_the_checkout_watches_every_tracked_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "helper.py").write_text("h = 1\n")
    head = make_repo(repo)
    probe = I._GitProbe(repo / "pkg")
    assert probe.version() == f"git:{head}"
    (repo / "pkg" / "helper.py").write_text("h = 2\n")
    assert probe.version().startswith(f"git:{head}-dirty-")


def test_tracked_names_that_are_not_utf8(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    odd = repo / os.fsdecode(b"caf\xe9.py")
    repo.mkdir()
    odd.write_text("c = 1\n")
    head = make_repo(repo)
    probe = I._GitProbe(repo)
    assert probe.version() == f"git:{head}"
    odd.write_text("c = 2\n")
    assert probe.version().startswith(f"git:{head}-dirty-")


def test_a_git_folder_that_is_no_repository(tmp_path: Path) -> None:
    (tmp_path / "broken" / ".git").mkdir(parents=True)
    probe = I._GitProbe(tmp_path / "broken")
    assert probe.git_dir == tmp_path / "broken" / ".git"
    assert probe.version() is None and probe.version() is None
    mod = load_module(tmp_path / "broken" / "step.py", "def step():\n    return 1\n")
    assert I.code_identity(mod.step, tmp_path / "broken").startswith("module:")


def test_a_git_dir_whose_path_holds_a_colon(tmp_path: Path) -> None:
    real = tmp_path / "store:1" / "repo.git"
    real.mkdir(parents=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / ".git").write_text(f"gitdir: {real}\n")
    assert I._GitProbe._find_git_dir(tree) == real.resolve()


def test_a_source_given_wins_over_the_functions_own_file(tmp_path: Path) -> None:
    mod = load_module(tmp_path / "steps_c.py", "def step():\n    return 1\n")
    other = tmp_path / "pipeline.py"
    other.write_text("print('the script that called begin_run')\n")
    assert I.code_identity(mod.step, tmp_path, source=other) == "module:" + sha_hex(other.read_bytes())[:32]


def test_the_git_probe_of_a_project_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    make_repo(repo)
    mod = load_module(repo / "step.py", "def step():\n    return 1\n")
    commit_all(repo, "step")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert I.code_identity(mod.step, repo) == f"git:{head}"
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert I.code_identity(mod.step, repo) == f"git:{head}"  # nothing changed: git is not asked again
