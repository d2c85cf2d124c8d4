"""Run signatures: config canonicalisation, code identity and miss explanations."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import consist
from consist import Tracker
from consist.hashing import canonical, hash_canonical


def noop(**kwargs: object) -> None:
    return None


def test_key_order_does_not_matter(tracker: Tracker, calls) -> None:
    def step(a: int, b: dict) -> None:
        calls()

    tracker.run(step, config={"a": 1, "b": {"x": 1, "y": 2}})
    r = tracker.run(step, config={"b": {"y": 2, "x": 1}, "a": 1})
    assert r.cache_hit and calls.n == 1


def test_zero_and_zero_point_zero_hash_alike_but_bool_differs() -> None:
    assert hash_canonical(canonical({"x": 0})) == hash_canonical(canonical({"x": 0.0}))
    assert hash_canonical(canonical({"x": 1})) != hash_canonical(canonical({"x": True}))
    assert hash_canonical(canonical({"x": 0.5})) != hash_canonical(canonical({"x": 0}))


def test_function_receives_original_config_values(tracker: Tracker) -> None:
    seen = []

    def step(x: float) -> None:
        seen.append(x)

    tracker.run(step, config={"x": 2.0})
    assert seen == [2.0] and isinstance(seen[0], float)


class Settings(BaseModel):
    households: int = 100
    scenario: str = "base"


@dataclasses.dataclass
class DC:
    households: int = 100
    scenario: str = "base"


def test_pydantic_and_dataclass_configs(tracker: Tracker, calls) -> None:
    got = []

    def step(households: int, scenario: str) -> None:
        calls()
        got.append((households, scenario))

    assert not tracker.run(step, config=Settings()).cache_hit
    assert tracker.run(step, config=Settings()).cache_hit
    assert not tracker.run(step, config=Settings(households=5)).cache_hit
    assert tracker.run(step, config=DC()).cache_hit  # same values, same canonical config
    assert got == [(100, "base"), (5, "base")]


def test_config_file_path_hashes_content(tracker: Tracker, calls) -> None:
    cfg = Path("settings.yaml")
    cfg.write_text("households: 100\n")

    def step() -> None:
        calls()

    tracker.run(step, config=cfg)
    assert tracker.run(step, config=cfg).cache_hit
    cfg.write_text("households: 200\n")
    assert not tracker.run(step, config=cfg).cache_hit
    assert calls.n == 2


def test_unhashable_config_is_a_clear_error(tracker: Tracker) -> None:
    with pytest.raises(consist.ConfigError, match=r"config\.obj"):
        tracker.run(noop, config={"obj": object()})


def test_pinned_code_version(make_tracker) -> None:
    t = make_tracker(code_version="v1")
    r = t.run(noop)
    assert r.run.code_version == "v1"
    assert t.run(noop).cache_hit
    assert not t.run(noop, code_version="v2").cache_hit
    expl = t.explain(t.run(noop, code_version="v3").run_id)
    assert expl["changed"] == ["code"]


def test_module_source_identity_outside_git(tracker: Tracker) -> None:
    r = tracker.run(noop)
    assert r.run.code_version.startswith("module:")


_NO_SOURCE = """
import consist, os, sys
from pathlib import Path
def make():
    p = Path("out.bin")
    p.write_bytes(os.urandom(64))
    return p
t = consist.Tracker(sys.argv[1], project_root=".")
first = t.run(make, name="mk", outputs=["out"])
Path("out.bin").unlink()
second = t.run(make, name="mk", outputs=["out"])
print(first.run.code_version, first.cache_hit, second.cache_hit)
t.close()
"""


def test_code_without_a_source_file_has_a_stable_identity(tmp_path: Path) -> None:
    # A script fed on stdin (or a notebook cell) has no source file to hash: its
    # identity comes from the code object and must not change between calls or
    # between processes with different string hash seeds.
    seen = []
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-", "runs"], input=_NO_SOURCE, text=True, capture_output=True,
            cwd=tmp_path, env={**os.environ, "PYTHONHASHSEED": seed, "CONSIST_PROGRESS": "0"}, check=True,
        )  # fmt: skip
        version, first_hit, second_hit = proc.stdout.split()
        assert version.startswith("code:")
        assert second_hit == "True", "the same function must hit on its second call"
        seen.append((version, first_hit))
    assert seen[0][0] == seen[1][0]
    assert seen[1][1] == "True", "a second process with another hash seed must hit too"
    changed = subprocess.run(
        [sys.executable, "-", "runs"], input=_NO_SOURCE.replace("os.urandom(64)", "os.urandom(65)"), text=True,
        capture_output=True, cwd=tmp_path, env={**os.environ, "CONSIST_PROGRESS": "0"}, check=True,
    )  # fmt: skip
    assert changed.stdout.split()[0] != seen[0][0]
    assert changed.stdout.split()[1] == "False"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_commit_identity_with_dirty_suffix(tmp_path: Path, make_tracker) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    (repo / "model.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    t = make_tracker(project_root=repo)
    first = t.run(noop)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert first.run.code_version == f"git:{head.strip()}"
    (repo / "model.py").write_text("x = 2\n")
    _git(repo, "add", ".")  # touches the index, which the probe watches
    second = t.run(noop)
    assert second.run.code_version.startswith(f"git:{head.strip()}-dirty-")
    assert not second.cache_hit
    assert t.explain(second.run_id)["changed"] == ["code"]


def test_cache_epoch_invalidates(make_tracker, calls) -> None:
    def step() -> None:
        calls()

    make_tracker(cache_epoch=1).run(step)
    assert make_tracker(cache_epoch=1).run(step).cache_hit
    assert not make_tracker(cache_epoch=2).run(step).cache_hit


def test_year_and_iteration_are_part_of_the_signature(tracker: Tracker, calls) -> None:
    def step() -> None:
        calls()

    tracker.run(step, year=2020)
    assert tracker.run(step, year=2020).cache_hit
    r = tracker.run(step, year=2030, iteration=1)
    assert not r.cache_hit
    assert tracker.explain(r.run_id)["details"]["run_fields"]["after"]["year"] == 2030


def test_miss_explanation_names_changed_config_keys_and_inputs(tracker: Tracker) -> None:
    a, b = Path("a.csv"), Path("b.csv")
    a.write_text("1\n")
    b.write_text("2\n")

    def step(left: Path, right: Path, alpha: int, beta: int) -> None:
        return None

    first = tracker.run(step, inputs={"left": a, "right": b}, config={"alpha": 1, "beta": 1})
    assert tracker.explain(first.run_id)["reason"] == "no_prior_run"
    r = tracker.run(step, inputs={"left": a, "right": b}, config={"alpha": 2, "beta": 1})
    expl = r.run.cache_miss_explanation
    assert expl["reason"] == "config_changed"
    assert expl["details"]["config_keys_changed"] == ["alpha"]
    assert expl["nearest_run"] == first.run_id
    b.write_text("3\n")
    r = tracker.run(step, inputs={"left": a, "right": b}, config={"alpha": 2, "beta": 1})
    expl = tracker.explain(r.run_id)
    assert expl["reason"] == "inputs_changed" and expl["details"]["inputs_changed"] == ["right"]
    stored = r.run.identity
    assert set(stored) == {"code", "config", "inputs", "run_fields", "cache_epoch"}
