"""Guarantees of consist.restoring: which producer a hit reuses, where a restore may write, what it puts back.

A hit reuses the newest producer that recorded every required output and whose objects
can all be restored: one whose objects were pruned is passed over silently, one whose
objects are damaged or whose place now leads out of the roots with a warning saying why.
Outputs in place are reused as recorded; outputs restored at a new place get new rows
pointing back to the producer's. A restore never writes into consist's own files, onto
a root itself, nor outside the tracker's roots (or the ``target_root`` it was given), and
says why in full; ``allow_external_paths`` opens the roots, never a ``target_root``.
Hydrating names each output under its key (keeping the recorded extension), refuses two
outputs bound for one place, and leaves an output whose content is right alone, whatever
the memo holds for other hashing modes. Every object is checked against its recorded
size and modes before anything is written, read from the tracker's own store before any
other; eager validation re-hashes every object of files, links and folders.
Real trackers, files and databases throughout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.hashing import FileHasher, stat_key
from consist.locations import UnresolvableLocation
from consist.objects import ObjectStore, _restored_perm
from files import aged, sha, write


def outputs(t: Tracker, run_id: str) -> dict[str, dict]:
    return {r["link_key"]: r for r in t._index.outputs_of(run_id)}


def rewrite_object(t: Tracker, digest: str, data: bytes) -> Path:
    obj = t._objects.path_of(digest)
    obj.chmod(0o644)
    obj.write_bytes(data)
    return obj


def outside(tmp_path: Path, name: str) -> Path:
    """A folder beside the test's project directory: outside every root of the tracker."""
    p = tmp_path.parent / f"{tmp_path.name}-{name}"
    p.mkdir(exist_ok=True)
    return p


def plan_for(t: Tracker, inputs: object) -> object:
    return t._plan(fn=None, source=None, name="direct", model="direct", config={"k": 1}, inputs=inputs, year=None,
                   iteration=None, cache_mode="reuse", code_version="v")  # fmt: skip


# --------------------------------------------------------------------- where a restore may write


def test_a_restore_into_consists_own_files_names_the_cause_and_the_fix(tracker: Tracker) -> None:
    dest = tracker.store_dir / "sha256" / "x"
    with pytest.raises(UnresolvableLocation) as err:
        tracker._check_destination(dest)
    assert str(err.value) == (
        f"A restore to {dest} would write into consist's own files ({tracker.store_dir}). "
        "Likely cause: the record of the run is damaged or was made to point there. "
        "Fix: check the run's outputs with `consist show RUN`."
    )
    index_dir = tracker.db_path.parent / f".{tracker.db_path.name}.consist"
    for own, dest in (
        (index_dir, index_dir / "x"),
        (tracker.db_path, tracker.db_path),
        (tracker.store_dir, index_dir.parent),  # a folder holding consist's files
    ):
        with pytest.raises(UnresolvableLocation, match=rf"would write into consist's own files \({own}\)\."):
            tracker._check_destination(dest)


def test_a_restore_outside_the_roots_names_the_roots_the_link_and_the_fix(tracker: Tracker, tmp_path: Path) -> None:
    away = outside(tmp_path, "away")
    Path("hop").symlink_to(away)
    dest = Path("hop/x.csv").absolute()
    with pytest.raises(UnresolvableLocation) as err:
        tracker._check_destination(dest)
    assert str(err.value) == (
        f"A restore to {dest} would write to {away / 'x.csv'}, outside the tracker's roots. "
        "Likely cause: a folder on the way is a symbolic link (for example one restored from the same record). "
        "Fix: remove the link, or check the run's outputs with `consist show RUN`."
    )


def test_a_restore_outside_its_target_root_names_the_target_root(tracker: Tracker) -> None:
    target = Path("t").absolute()
    dest = Path("elsewhere/x.csv").absolute()
    with pytest.raises(UnresolvableLocation) as err:
        tracker._check_destination(dest, within=target)
    assert str(err.value).startswith(f"A restore to {dest} would write to {dest}, outside {target}. Likely cause: ")


def test_allow_external_paths_opens_the_roots_but_never_a_target_root(make_tracker, tmp_path: Path) -> None:
    t = make_tracker(allow_external_paths=True)
    away = outside(tmp_path, "ext")
    t._check_destination(away / "x.csv")  # outside the roots, allowed: no error
    with pytest.raises(UnresolvableLocation, match=rf"would write to {away}/x\.csv, outside {tmp_path}/t\. "):
        t._check_destination(away / "x.csv", within=tmp_path / "t")
    with pytest.raises(UnresolvableLocation, match="consist's own files"):  # still never into consist's files
        t._check_destination(t.store_dir / "x")


def test_a_restore_onto_a_root_itself_is_refused_and_into_it_allowed(make_tracker, tmp_path: Path) -> None:
    data = outside(tmp_path, "data")
    t = make_tracker(mounts={"data": data})
    with pytest.raises(UnresolvableLocation) as err:
        t._check_destination(data)  # would replace the whole mount
    assert str(err.value) == (
        f"A restore to {data} would replace the root {data} itself. Likely cause: a folder on the way is a "
        "symbolic link to a root (for example one restored from the same record). Fix: remove the link, or "
        "check the run's outputs with `consist show RUN`."
    )
    t._check_destination(data / "x.csv")  # inside the mount: no error
    t._check_destination(data / "sub" / "x.csv")


def test_allow_external_paths_never_lets_a_restore_replace_a_root(make_tracker, tmp_path: Path) -> None:
    data = outside(tmp_path, "data")
    t = make_tracker(mounts={"data": data}, allow_external_paths=True)
    (t.run_dir / "up").symlink_to(data.parent)  # a folder replaced by a link to the mount's parent
    for dest in (data, t.run_dir / "up" / data.name):
        with pytest.raises(UnresolvableLocation, match=f"would replace the root {data} itself"):
            t._check_destination(dest)
    for dest in (t.run_dir, t.project_root):  # these hold consist's own files: refused for that first
        with pytest.raises(UnresolvableLocation, match="consist's own files"):
            t._check_destination(dest)
    t._check_destination(outside(tmp_path, "elsewhere") / "x.csv")  # what the option is for


# --------------------------------------------------------------------- hydrating: refusals


def test_a_read_only_tracker_refuses_to_hydrate_naming_the_run(make_tracker) -> None:
    w = make_tracker()
    made = w.run(lambda: write("o.csv", "o"), name="h", outputs=["o"])
    w.close()
    ro = make_tracker(read_only=True)
    with pytest.raises(consist.RunStateError) as err:
        ro.hydrate_run_outputs(made.run_id)
    assert str(err.value).startswith(f"Cannot hydrate the outputs of {made.run_id!r}: this tracker is read-only. ")


def test_hydrating_an_unknown_run_names_the_cause_and_the_fix(tracker: Tracker) -> None:
    with pytest.raises(consist.RunNotFoundError) as err:
        tracker.hydrate_run_outputs("nope")
    assert str(err.value) == (
        f"No run with id 'nope' in {tracker._index.location}. "
        "Likely cause: the id is misspelled, or the run was recorded in another database. "
        "Fix: list runs with tracker.find_runs() or `consist runs`."
    )


def test_hydrating_unknown_keys_lists_them_and_the_recorded_ones(tracker: Tracker) -> None:
    made = tracker.run(lambda: {"a": write("a.csv", "a"), "b": write("b.csv", "b")}, name="h", outputs=["a", "b"])
    with pytest.raises(consist.OutputError) as err:
        tracker.hydrate_run_outputs(made.run_id, keys=["x", "a", "y"])
    assert str(err.value) == (
        f"Run {made.run_id!r} recorded no output 'x', 'y'. "
        "Likely cause: its outputs are 'a', 'b'. Fix: pass keys= from that list."
    )
    empty = tracker.run(lambda: None, name="nothing")
    with pytest.raises(consist.OutputError) as err:
        tracker.hydrate_run_outputs(empty.run_id, keys=["a"])
    assert str(err.value) == (
        f"Run {empty.run_id!r} recorded no output 'a'. Likely cause: its outputs are none. "
        "Fix: pass keys= from that list."
    )
    assert tracker.hydrate_run_outputs(empty.run_id) == {}


def test_two_outputs_bound_for_one_place_are_refused_naming_both_keys(tracker: Tracker) -> None:
    made = tracker.run(lambda: {"t": write("x.csv", "1"), "t.csv": write("y.csv", "2")}, name="h",
                       outputs=["t", "t.csv"])  # fmt: skip
    target = Path("restart").absolute()
    with pytest.raises(consist.OutputError) as err:
        tracker.hydrate_run_outputs(made.run_id, target_root="restart")
    assert str(err.value) == (
        f"Outputs of {made.run_id!r} would be hydrated to the same place: {{'{target / 't.csv'}': ['t', 't.csv']}}. "
        "Likely cause: their keys differ only in characters a file name cannot hold, or they were recorded "
        "at one place. Fix: hydrate them one at a time with keys=[...] into different target_root folders."
    )
    assert not target.exists()  # nothing was written
    assert tracker.hydrate_run_outputs(made.run_id, target_root="restart", keys=["t"]) == {"t": target / "t.csv"}
    assert (target / "t.csv").read_text() == "1"


# --------------------------------------------------------------------- hydrating: where each output goes


def test_hydrated_outputs_are_named_by_key_keeping_the_recorded_extension(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        return {
            "plain": write("out/p.txt", "p"),  # no extension in the key: the recorded one is added
            "named.csv": write("out/n.txt", "n"),  # the key's own extension is kept as it is
            "store": write("out/s.zarr/a.bin", "a").parent,  # a folder is named by its key alone
            "d.v1": write("out/d.v2/b.bin", "b").parent,
        }

    made = tracker.run(step, name="h", outputs=["plain", "named.csv", "store", "d.v1"])
    got = tracker.hydrate_run_outputs(made.run_id, target_root="restart")
    root = Path("restart").absolute()
    assert got == {"plain": root / "plain.txt", "named.csv": root / "named.csv", "store": root / "store",
                   "d.v1": root / "d.v1"}  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["d.v1", "named.csv", "plain.txt", "store"]
    assert (root / "store" / "a.bin").read_text() == "a" and (root / "named.csv").read_text() == "n"


def test_a_target_root_outside_the_project_is_allowed(tracker: Tracker, tmp_path: Path) -> None:
    made = tracker.run(lambda: write("o.csv", "o"), name="h", outputs=["o"])
    target = outside(tmp_path, "restart")
    assert tracker.hydrate_run_outputs(made.run_id, target_root=target) == {"o": target / "o.csv"}
    assert (target / "o.csv").read_text() == "o"


def test_hydrating_keeps_recorded_modes(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        p = write("private.csv", "secret")
        os.chmod(p, 0o600)
        x = write("tool.sh", "#!/bin/sh\n")
        os.chmod(x, 0o755)
        return {"p": p, "x": x}

    made = tracker.run(step, name="h", outputs=["p", "x"])
    got = tracker.hydrate_run_outputs(made.run_id, target_root="restart")
    assert stat.S_IMODE(got["p"].stat().st_mode) == _restored_perm(0o600)
    assert stat.S_IMODE(got["x"].stat().st_mode) == _restored_perm(0o755)


def test_a_content_right_output_in_place_is_left_alone_whatever_the_fast_memo_holds(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("out/o.csv", "content"), name="h", outputs=["o"])
    placed = aged(write("restart/o.csv", "content"))
    os.chmod(placed, _restored_perm(None))  # the mode a restore gives an ordinary file
    fast = FileHasher(tracker._index, "fast")
    fast.hash_file(placed)  # the memo now holds a fast-mode hash for its stat
    assert tracker._index.memo_get(stat_key(placed.stat()), fast.algo) not in (None, made.outputs["o"].hash)
    before = placed.stat()
    assert tracker.hydrate_run_outputs(made.run_id, target_root="restart") == {"o": placed.absolute()}
    after = placed.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# --------------------------------------------------------------------- what is checked before writing


def test_a_truncated_object_is_refused_by_its_recorded_size_before_anything_is_written(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("o.csv", "good"), name="h", outputs=["o"])
    obj = rewrite_object(tracker, made.outputs["o"].hash, b"bad")
    with pytest.raises(consist.IntegrityError) as err:
        tracker.hydrate_run_outputs(made.run_id, target_root="t")
    assert str(err.value).startswith(f"Stored object {obj} has 3 bytes, expected 4. ")
    assert not Path("t/o.csv").exists() and tracker._index.query("SELECT * FROM lease") == []


def test_eager_validation_checks_a_links_recorded_target_length(tracker: Tracker) -> None:
    def step() -> Path:
        write("real.csv", "r")
        if not Path("lnk").is_symlink():
            os.symlink("real.csv", "lnk")
        return Path("lnk")

    made = tracker.run(step, name="h", outputs=["l"])
    row = outputs(tracker, made.run_id)["l"]
    assert row["kind"] == "link" and row["size"] == len("real.csv")
    tracker._verify_output(made.run_id, row)  # intact: no error
    with pytest.raises(consist.IntegrityError) as err:
        tracker._verify_output(made.run_id, {**row, "size": 99})
    assert str(err.value).startswith(f"Stored link {row['hash']} has a target of 8 bytes, expected 99. ")


def test_eager_validation_rehashes_every_member_of_a_folder(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("d/a.txt", "a").parent, name="h", outputs=["d"])
    row = outputs(tracker, made.run_id)["d"]
    tracker._verify_output(made.run_id, row)  # intact: no error
    [member] = tracker._index.members_of(made.run_id, row["id"])
    obj = rewrite_object(tracker, member["hash"], b"b")  # the same size, other bytes
    with pytest.raises(consist.IntegrityError) as err:
        tracker._verify_output(made.run_id, row)
    assert str(err.value).startswith(f"Stored object {obj} hashes to {sha(b'b')}, not {member['hash']}. ")


def test_eager_validation_checks_each_member_against_its_recorded_size(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = tracker.run(lambda: write("d/a.txt", "a").parent, name="h", outputs=["d"])
    row = outputs(tracker, made.run_id)["d"]
    members_of = tracker._index.members_of
    monkeypatch.setattr(  # a member row damaged in the index
        tracker._index, "members_of", lambda run, art: [{**m, "size": 2} for m in members_of(run, art)]
    )
    [member] = tracker._index.members_of(made.run_id, row["id"])
    with pytest.raises(consist.IntegrityError) as err:
        tracker._verify_output(made.run_id, row)
    assert str(err.value).startswith(
        f"Stored object {tracker._objects.path_of(member['hash'])} has 1 bytes, expected 2. "
    )


def test_an_object_verified_in_another_store_is_remembered_in_the_index(make_tracker) -> None:
    a = make_tracker(run_dir="runs_a")
    b = make_tracker(run_dir="runs_b")
    made = a.run(lambda: write("o.txt", "o"), name="h", outputs=["o"])
    digest = made.outputs["o"].hash
    obj = a._objects.path_of(digest)
    aged(obj)  # a stat the memo has not seen
    key = stat_key(obj.stat())
    assert b._index.memo_get(key, ObjectStore.memo_algo) is None
    b._verify_output(made.run_id, outputs(b, made.run_id)["o"])
    assert b._store_for(digest).root == a._objects.root
    assert b._index.memo_get(key, ObjectStore.memo_algo) == digest


def test_an_object_in_the_trackers_own_store_is_read_from_there_before_any_other(make_tracker) -> None:
    a = make_tracker(run_dir="runs_a")
    b = make_tracker(run_dir="runs_b")
    made = a.run(lambda: write("o.txt", "same"), name="in_a", outputs=["o"])
    b.run(lambda: write("p.txt", "same"), name="in_b", outputs=["o"])  # the same bytes, stored in b's store too
    digest = made.outputs["o"].hash
    assert sorted(b._index.object_stores(digest)) == sorted([str(a._objects.root), str(b._objects.root)])
    assert b._store_for(digest).root == b._objects.root and a._store_for(digest).root == a._objects.root
    b._objects.remove(digest)  # gone from b's store: the other store still listed has it
    assert b._store_for(digest).root == a._objects.root


# --------------------------------------------------------------------- inputs put back


def test_a_gone_input_put_back_is_logged_with_its_key_and_place(tracker: Tracker, caplog) -> None:
    made = tracker.run(lambda: write("g.csv", "gone"), name="g", outputs=["o"])
    Path("g.csv").unlink()
    plan = plan_for(tracker, {"src": made.outputs["o"]})
    [(_key, path, _digest)] = plan.inputs
    caplog.set_level(logging.INFO, logger="consist")
    tracker._materialize_inputs(plan)
    assert path.read_text() == "gone"
    assert [r.getMessage() for r in caplog.records if r.name == "consist"] == [
        f"consist: input 'src' was not at {path}; restored it from the object store"
    ]


def test_a_gone_input_already_put_back_is_left_alone_whatever_the_fast_memo_holds(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("g.csv", "gone"), name="g", outputs=["o"])
    Path("g.csv").unlink()
    plan = plan_for(tracker, {"src": made.outputs["o"]})
    [(_key, path, _digest)] = plan.inputs
    tracker._materialize_inputs(plan)
    aged(path)
    fast = FileHasher(tracker._index, "fast")
    fast.hash_file(path)  # the memo now holds a fast-mode hash for its stat
    assert tracker._index.memo_get(stat_key(path.stat()), fast.algo) not in (None, made.outputs["o"].hash)
    before = path.stat()
    tracker._materialize_inputs(plan)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and path.read_text() == "gone"


# --------------------------------------------------------------------- which producer a hit reuses, what it restores


def direct(t: Tracker, fn, outputs, **kwargs):  # type: ignore[no-untyped-def]
    """Run ``fn`` as the step that :func:`plan_for` plans (same name, config and code version)."""
    return t.run(fn, name="direct", config={"k": 1}, code_version="v", outputs=outputs, **kwargs)


def test_no_producer_is_no_match(tracker: Tracker) -> None:
    assert tracker._try_reuse(plan_for(tracker, None), None, None) == "no_match"


def test_outputs_in_place_are_reused_as_the_recorded_rows(tracker: Tracker) -> None:
    made = direct(tracker, lambda: {"o": write("out/o.csv", "o"), "d": write("out/d/a.txt", "a").parent}, ["o", "d"])
    rows = outputs(tracker, made.run_id)
    before = Path("out/o.csv").stat().st_mtime_ns
    found = tracker._try_reuse(plan_for(tracker, None), None, ["o", "d"])  # exactly the recorded keys
    assert not isinstance(found, str)
    producer, restored = found
    assert producer["id"] == made.run_id and set(restored) == {"o", "d"}
    assert restored["o"] == rows["o"]  # in place: the very row, nothing new, no members
    members = tracker._index.members_of(made.run_id, rows["d"]["id"])
    assert [m["key"] for m in members] == ["a.txt"]
    assert restored["d"] == {**rows["d"], "_members": members}
    assert Path("out/o.csv").stat().st_mtime_ns == before  # not rewritten
    assert tracker._try_reuse(plan_for(tracker, None), None, None)[0]["id"] == made.run_id


def test_outputs_restored_at_a_new_place_get_new_rows_pointing_back(tracker: Tracker) -> None:
    made = direct(tracker, lambda: {"o": write("out/o.csv", "o"), "d": write("out/d/a.txt", "a").parent}, ["o", "d"])
    rows = outputs(tracker, made.run_id)
    dests = {"o": Path("elsewhere/o.csv"), "d": Path("elsewhere/d")}
    producer, restored = tracker._try_reuse(plan_for(tracker, None), dests, None)
    assert producer["id"] == made.run_id
    assert Path("elsewhere/o.csv").read_text() == "o" and Path("elsewhere/d/a.txt").read_text() == "a"
    o, d = restored["o"], restored["d"]
    here = Path.cwd().resolve()
    assert (
        o["id"] != d["id"] and set(o) == set(rows["o"]) | {"_new"} and set(d) == set(rows["d"]) | {"_new", "_members"}
    )
    for key, row in (("o", o), ("d", d)):
        old = rows[key]
        assert len(row["id"]) == 32 and row["id"] != old["id"]
        assert row["uri"] == str(here / "elsewhere" / Path(old["uri"]).name)
        assert row["location"] == f"project://elsewhere/{Path(old['uri']).name}"
        assert row["meta"] == f'{{"restored_from":"{old["id"]}"}}' and row["_new"] is True
        assert row["run_id"] == made.run_id and row["hash"] == old["hash"] and row["kind"] == old["kind"]
        assert row["created_at"] > old["created_at"]  # when this copy was made
        kept = set(old) - {"id", "uri", "location", "meta", "created_at"}  # the rest is the producer's, unchanged
        assert {k: row[k] for k in kept} == {k: old[k] for k in kept}
    [member] = d["_members"]
    assert member == {
        "id": member["id"], "key": "a.txt", "uri": f"{d['uri']}/a.txt", "location": "project://elsewhere/d/a.txt",
        "hash": sha(b"a"), "size": 1, "kind": "file", "driver": member["driver"], "run_id": made.run_id,
        "created_at": d["created_at"], "meta": f'{{"member_of":"{d["id"]}"}}', "_new": True,
    }  # fmt: skip


def test_a_place_outside_the_roots_is_recorded_by_its_path(make_tracker, tmp_path: Path) -> None:
    t = make_tracker(allow_external_paths=True)
    direct(t, lambda: write("out/o.csv", "o"), ["o"])
    away = outside(tmp_path, "hit")
    _producer, restored = t._try_reuse(plan_for(t, None), {"o": away / "o.csv"}, ["o"])
    assert restored["o"]["uri"] == restored["o"]["location"] == str(away / "o.csv")
    assert (away / "o.csv").read_text() == "o"


def test_a_gone_output_is_restored_with_its_recorded_mode(tracker: Tracker) -> None:
    def step() -> Path:
        p = write("private.csv", "secret")
        os.chmod(p, 0o600)
        return p

    made = direct(tracker, step, ["p"])
    Path("private.csv").unlink()
    assert tracker._try_reuse(plan_for(tracker, None), None, ["p"])[0]["id"] == made.run_id
    assert Path("private.csv").read_text() == "secret"
    assert stat.S_IMODE(Path("private.csv").stat().st_mode) == _restored_perm(0o600)


def test_a_producer_lacking_a_required_output_is_passed_over_for_an_older_one(tracker: Tracker) -> None:
    made: list[str] = []

    def step() -> None:
        consist.log_output(write("a.txt", "a"), key="a")
        if not made:
            consist.log_output(write("b.txt", "b"), key="b")
        made.append("x")

    older = tracker.run(step, name="direct", config={"k": 1}, code_version="v")
    newer = tracker.run(step, name="direct", config={"k": 1}, code_version="v", cache_mode="overwrite")
    plan = plan_for(tracker, None)
    assert tracker._try_reuse(plan, None, ["a"])[0]["id"] == newer.run_id
    assert tracker._try_reuse(plan, None, ["a", "b"])[0]["id"] == older.run_id
    assert tracker._try_reuse(plan, None, ["a", "c"]) == "outputs_not_recorded"


def _two_producers(t: Tracker) -> tuple[str, str]:
    n: list[int] = []

    def step() -> Path:
        n.append(1)
        return write("o.csv", f"v{len(n)}")  # other bytes each time

    older = direct(t, step, ["o"])
    newer = direct(t, step, ["o"], cache_mode="overwrite")
    Path("o.csv").unlink()
    return older.run_id, newer.run_id


def test_a_producer_whose_objects_were_pruned_is_passed_over_silently(tracker: Tracker, recwarn) -> None:
    older, newer = _two_producers(tracker)
    digest = outputs(tracker, newer)["o"]["hash"]
    tracker._objects.remove(digest)
    tracker._index.drop_objects([(digest, str(tracker._objects.root))])
    assert tracker._try_reuse(plan_for(tracker, None), None, ["o"])[0]["id"] == older
    assert Path("o.csv").read_text() == "v1"
    Path("o.csv").unlink()
    digest = outputs(tracker, older)["o"]["hash"]
    tracker._objects.remove(digest)
    tracker._index.drop_objects([(digest, str(tracker._objects.root))])
    assert tracker._try_reuse(plan_for(tracker, None), None, ["o"]) == "outputs_pruned"
    assert [str(w.message) for w in recwarn] == []


def test_a_producer_whose_objects_are_damaged_is_passed_over_with_a_warning(tracker: Tracker) -> None:
    older, newer = _two_producers(tracker)
    obj = rewrite_object(tracker, outputs(tracker, newer)["o"]["hash"], b"bad")  # 3 bytes where 2 were stored
    with pytest.warns(consist.ConsistWarning) as caught:
        assert tracker._try_reuse(plan_for(tracker, None), None, ["o"])[0]["id"] == older
    assert [str(w.message) for w in caught] == [
        f"Cached outputs of run {newer!r} cannot be restored (Stored object {obj} has 3 bytes, expected 2. "
        "Likely cause: the file was modified or truncated after it was stored. Fix: nothing to do: the step "
        "runs again; run tracker.prune_store() to drop damaged objects.); running the step again."
    ]
    assert Path("o.csv").read_text() == "v1"


def test_an_object_deleted_by_hand_but_still_listed_is_reported_unavailable(tracker: Tracker) -> None:
    older, newer = _two_producers(tracker)
    for run_id in (older, newer):
        tracker._objects.remove(outputs(tracker, run_id)["o"]["hash"])  # still listed in the index
    with pytest.warns(consist.ConsistWarning) as caught:
        assert tracker._try_reuse(plan_for(tracker, None), None, ["o"]) == "outputs_unavailable"
    assert [str(w.message).split(" cannot be restored (")[0] for w in caught] == [
        f"Cached outputs of run {newer!r}",
        f"Cached outputs of run {older!r}",
    ]
    assert all("is missing from" in str(w.message) for w in caught)


def test_eager_validation_rehashes_outputs_in_place_and_lazy_validation_trusts_them(tracker: Tracker) -> None:
    made = direct(tracker, lambda: {"o": write("o.csv", "o"), "d": write("d/a.txt", "a").parent}, ["o", "d"])
    rows = outputs(tracker, made.run_id)
    lazy = plan_for(tracker, None)
    eager = dataclasses.replace(lazy, validate="eager")
    assert tracker._try_reuse(eager, None, None)[0]["id"] == made.run_id  # intact: reused
    [member] = tracker._index.members_of(made.run_id, rows["d"]["id"])
    obj = rewrite_object(tracker, member["hash"], b"b")  # same size, other bytes; the folder in place is intact
    assert tracker._try_reuse(lazy, None, None)[0]["id"] == made.run_id
    with pytest.warns(consist.ConsistWarning, match=rf"Stored object {obj} hashes to {sha(b'b')}, not "):
        assert tracker._try_reuse(eager, None, None) == "outputs_unavailable"


def test_a_producer_whose_place_is_now_reached_through_a_link_out_of_the_roots_is_not_restored(
    tracker: Tracker, tmp_path: Path
) -> None:
    made = direct(tracker, lambda: write("out/o.csv", "o"), ["o"])
    (Path("out") / "o.csv").unlink()
    Path("out").rmdir()
    away = outside(tmp_path, "linked")
    Path("out").symlink_to(away)  # the recorded folder is now a link leaving the roots
    dest = Path("out/o.csv").absolute()
    with pytest.warns(consist.ConsistWarning) as caught:
        assert tracker._try_reuse(plan_for(tracker, None), None, ["o"]) == "outputs_unavailable"
    assert [str(w.message) for w in caught] == [
        f"Cached outputs of run {made.run_id!r} cannot be restored (A restore to {dest} would write to "
        f"{away / 'o.csv'}, outside the tracker's roots. Likely cause: a folder on the way is a symbolic link (for "
        "example one restored from the same record). Fix: remove the link, or check the run's outputs with "
        "`consist show RUN`.); running the step again."
    ]
    assert list(away.iterdir()) == []  # nothing written through the link
