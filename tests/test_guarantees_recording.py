"""Guarantees of consist.recording: what a run's record links, on a miss and on a hit.

The files of a directory output are recorded as members of the run that produced
it and of every run that hit it; an input whose content an earlier run produced
is linked to that run's artifact (lineage follows the data), unless inputs are
hashed by size and time only, which cannot tell contents apart. Real trackers,
real files.
"""

from __future__ import annotations

from pathlib import Path

from consist import Tracker
from test_guarantees_tracker import links, write


def make_dir(root: str) -> Path:
    write(f"{root}/a.csv", "a")
    write(f"{root}/sub/b.csv", "bb")
    return Path(root)


def test_the_files_of_a_directory_output_are_members_of_its_run_and_of_each_hit(tracker: Tracker) -> None:
    def step() -> Path:
        return make_dir("out")

    first = tracker.run(step, name="dir_step", outputs=["d"])
    members = links(tracker, first.run_id, "member")
    assert sorted(members) == ["a.csv", "sub/b.csv"]
    d = first.outputs["d"]
    for key, m in members.items():
        assert m["direction"] == "member" and m["run_id"] == first.run_id
        assert m["uri"] == f"{d.uri}/{key}" and d.id in m["meta"]
    assert members["sub/b.csv"]["size"] == 2
    assert sorted(links(tracker, first.run_id, "output")) == ["d"]
    assert sorted(m["link_key"] for m in tracker._index.members_of(first.run_id, d.id)) == sorted(members)

    hit = tracker.run(step, name="dir_step", outputs=["d"])
    assert hit.cache_hit
    hit_members = links(tracker, hit.run_id, "member")
    # The hit links the producer's member artifacts; it records no new ones.
    assert {k: m["id"] for k, m in hit_members.items()} == {k: m["id"] for k, m in members.items()}
    assert len(tracker._index.query("SELECT id FROM artifact WHERE meta LIKE '%member_of%'")) == 2


def test_a_directory_output_restored_at_a_new_place_gets_member_rows_of_its_own(make_tracker) -> None:
    def step(dest: str) -> Path:
        return make_dir(dest)

    t = make_tracker()
    first = t.run(step, name="moved", config={"dest": "here"}, outputs=["d"])
    other = make_tracker("elsewhere")
    hit = other.run(step, name="moved", config={"dest": "here"}, outputs=["d"])
    assert hit.cache_hit
    produced = links(t, first.run_id, "member")
    restored = links(other, hit.run_id, "member")
    assert sorted(restored) == sorted(produced)
    for key in produced:
        assert restored[key]["hash"] == produced[key]["hash"]
        assert restored[key]["run_id"] == first.run_id  # the same producer, another place


def test_an_input_an_earlier_run_produced_is_linked_to_that_runs_artifact(tracker: Tracker) -> None:
    def make() -> Path:
        return write("made.csv", "x,y\n")

    made = tracker.run(make, name="make", outputs=["made"])
    use = tracker.run(lambda p: None, name="use", inputs={"p": "made.csv"})
    [link] = links(tracker, use.run_id, "input").values()
    assert link["id"] == made.outputs["made"].id and link["run_id"] == made.run_id
    assert link["link_key"] == "p"


def test_an_input_no_run_produced_gets_an_artifact_of_its_own(tracker: Tracker) -> None:
    write("raw.csv", "raw")
    r = tracker.run(lambda p: None, name="read", inputs={"p": "raw.csv"})
    [link] = links(tracker, r.run_id, "input").values()
    assert link["run_id"] is None and link["key"] == "p" and link["kind"] == "file"
    assert link["uri"] == str(Path("raw.csv").resolve()) and link["size"] == 3
    again = tracker.run(lambda p: None, name="read2", inputs={"p": "raw.csv"})
    assert links(tracker, again.run_id, "input")["p"]["id"] == link["id"]  # same place, same content


def test_fast_hashing_never_links_an_input_to_a_producer_by_size_and_time(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    made = t.run(lambda: write("made.csv", "x,y\n"), name="make", outputs=["made"])
    use = t.run(lambda p: None, name="use", inputs={"p": "made.csv"})
    [link] = links(t, use.run_id, "input").values()
    assert link["id"] != made.outputs["made"].id and link["run_id"] is None
