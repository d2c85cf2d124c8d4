"""Guarantees of consist.locations: a hit restores into the asking workspace, never another one.

Outputs are recorded relative to a named root; a location resolves against the
roots of the tracker that asks, and a location that would leave its root, or
name a root this tracker lacks, is refused rather than guessed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import consist
from consist.locations import Roots, UnresolvableLocation, check_mount_name, is_portable


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    project = tmp_path / "project"
    return Roots(project / "runs", project, {"scratch": tmp_path / "scratch", "deep": tmp_path / "s" / "t" / "u"})


@pytest.mark.parametrize("name", ["scratch", "a", "data2", "x_y.z+w-v"])
def test_usable_mount_names(name: str) -> None:
    assert check_mount_name(name) == name


@pytest.mark.parametrize("name", ["Scratch", "1data", "_x", "", "a/b", "a b", "run_dir", "project", "a:"])
def test_refused_mount_names(name: str) -> None:
    with pytest.raises(consist.ConsistError) as err:
        check_mount_name(name)
    assert f"Mount name {name!r} cannot be used" in str(err.value)
    assert "not run_dir or project" in str(err.value)
    assert 'use e.g. mounts={"scratch": "/scratch/data"}' in str(err.value)


def test_refused_mount_names_stop_the_tracker(tmp_path: Path) -> None:
    with pytest.raises(consist.ConsistError, match="cannot be used"):
        Roots(tmp_path, tmp_path, {"Bad": tmp_path})


def test_locate_names_the_most_specific_root(tmp_path: Path, roots: Roots) -> None:
    project = tmp_path / "project"
    assert roots.named == {
        "run_dir": project / "runs",
        "project": project,
        "scratch": tmp_path / "scratch",
        "deep": tmp_path / "s" / "t" / "u",
    }
    assert roots.locate(project / "runs" / "a" / "b.csv") == "run_dir://a/b.csv"
    assert roots.locate(project / "runs") == "run_dir://"
    assert roots.locate(project / "data" / "c.csv") == "project://data/c.csv"
    assert roots.locate(project) == "project://"
    assert roots.locate(tmp_path / "scratch" / "x") == "scratch://x"
    assert roots.locate(tmp_path / "s" / "t" / "u" / "v") == "deep://v"
    assert roots.locate(tmp_path / "s" / "t") is None
    assert roots.locate(tmp_path / "projects" / "x") is None  # a prefix is not a parent
    same = Roots(tmp_path, tmp_path, {})
    assert same.locate(tmp_path / "x") == "run_dir://x"  # equal depth: run_dir first


def test_locate_prefers_a_nested_mount_over_its_parent(tmp_path: Path) -> None:
    r = Roots(tmp_path / "runs", tmp_path, {"inner": tmp_path / "data" / "inner", "outer": tmp_path / "data"})
    assert r.locate(tmp_path / "data" / "inner" / "f") == "inner://f"
    assert r.locate(tmp_path / "data" / "f") == "outer://f"


def test_output_locations_outside_every_root(tmp_path: Path, roots: Roots) -> None:
    outside = tmp_path / "elsewhere" / "o.csv"
    assert roots.location_for_output(tmp_path / "scratch" / "o.csv", "o") == "scratch://o.csv"
    with pytest.raises(consist.OutputError) as err:
        roots.location_for_output(outside, "trips")
    message = str(err.value)
    assert message.startswith(f"Output 'trips' at {outside} lies outside the tracker's roots (run_dir=")
    assert f"scratch={tmp_path / 'scratch'}" in message
    assert "allow_external_paths=True (or CONSIST_ALLOW_EXTERNAL_PATHS=1)" in message
    free = Roots(tmp_path / "r", tmp_path / "p", {}, allow_external=True)
    assert free.location_for_output(outside, "trips") == str(outside)


def test_resolve_places_a_location_in_this_workspace(tmp_path: Path, roots: Roots) -> None:
    project = tmp_path / "project"
    assert roots.resolve("run_dir://a/b.csv") == project / "runs" / "a" / "b.csv"
    for root_itself in ("project://", "run_dir://", "scratch://.", str(project)):
        with pytest.raises(UnresolvableLocation, match="names a root itself"):  # a restore would replace the root
            roots.resolve(root_itself)
    assert roots.resolve("scratch://x/./y") == tmp_path / "scratch" / "x" / "y"
    assert roots.resolve(str(project / "in.csv")) == project / "in.csv"  # absolute, inside a root


@pytest.mark.parametrize(
    "location",
    ["run_dir://../escape", "run_dir://a/../../b", "run_dir:///etc/passwd", "run_dir://a\\b",
     "run_dir://a\0b"],
)  # fmt: skip
def test_locations_that_leave_their_root_are_refused(roots: Roots, location: str) -> None:
    with pytest.raises(UnresolvableLocation, match="leaves its root"):
        roots.resolve(location)


def test_unknown_mounts_relative_and_external_paths_are_refused(tmp_path: Path, roots: Roots) -> None:
    with pytest.raises(UnresolvableLocation) as err:
        roots.resolve("other://x")
    assert "recorded under the mount 'other', which this tracker does not have" in str(err.value)
    assert 'Tracker(..., mounts={"other": "/path/to/it"})' in str(err.value)
    with pytest.raises(UnresolvableLocation, match="is not absolute"):
        roots.resolve("relative/path.csv")
    outside = str(tmp_path / "elsewhere" / "o.csv")
    with pytest.raises(UnresolvableLocation) as err:
        roots.resolve(outside)
    assert f"recorded outside every root, at {outside}" in str(err.value)
    assert "pass allow_external_paths=True" in str(err.value)
    free = Roots(tmp_path / "r", tmp_path / "p", {}, allow_external=True)
    assert free.resolve(outside) == Path(outside)
    assert isinstance(UnresolvableLocation("x"), consist.ConsistError)


def test_portable_locations() -> None:
    assert is_portable("run_dir://a") and is_portable("scratch://")
    assert not is_portable("/abs/path") and not is_portable(None) and not is_portable("")


def test_location_messages_read_in_full(tmp_path: Path, roots: Roots) -> None:
    with pytest.raises(consist.ConsistError) as err:
        check_mount_name("Data")
    assert str(err.value) == (
        "Mount name 'Data' cannot be used. Likely cause: mount names become location prefixes (Data://...): "
        "lower-case letters, digits and _ . + -, starting with a letter, and not run_dir or project. "
        'Fix: use e.g. mounts={"scratch": "/scratch/data"}.'
    )
    small = Roots(tmp_path / "r", tmp_path / "p", {"m": tmp_path / "m"})
    outside = tmp_path / "x.csv"
    with pytest.raises(consist.OutputError) as err:
        small.location_for_output(outside, "k")
    assert str(err.value) == (
        f"Output 'k' at {outside} lies outside the tracker's roots (run_dir={tmp_path / 'r'}, "
        f"project={tmp_path / 'p'}, m={tmp_path / 'm'}). Likely cause: outputs are recorded relative to a root "
        "so that another workspace can restore its own copy. Fix: write it under run_dir or the project, add "
        "its folder to Tracker(mounts=...), or allow it with allow_external_paths=True (or "
        "CONSIST_ALLOW_EXTERNAL_PATHS=1)."
    )
    with pytest.raises(UnresolvableLocation) as err:
        small.resolve(str(outside))
    assert str(err.value) == (
        f"The output was recorded outside every root, at {outside}. Likely cause: restoring there could "
        "overwrite a file of another workspace. Fix: pass allow_external_paths=True to restore it there anyway."
    )
    with pytest.raises(UnresolvableLocation) as err:
        small.resolve("gone://f")
    assert str(err.value) == (
        "The output was recorded under the mount 'gone', which this tracker does not have. Likely cause: the "
        "producing tracker had Tracker(mounts={...}) with that name. Fix: add it: "
        'Tracker(..., mounts={"gone": "/path/to/it"}).'
    )
    with pytest.raises(UnresolvableLocation) as err:
        small.resolve("m://../x")
    assert str(err.value) == "Recorded location 'm://../x' leaves its root. Likely cause: a damaged record."
    with pytest.raises(UnresolvableLocation) as err:
        small.resolve("rel/x")
    assert str(err.value) == "Recorded location 'rel/x' is not absolute."
