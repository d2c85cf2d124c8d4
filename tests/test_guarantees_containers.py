"""Guarantees of the container mount and path checks, and of the container key parts.

Every check here runs before any engine is asked for anything, so these tests need
no Docker, Podman or Apptainer: they call the planning functions on real paths, and
run_container itself where it must refuse a call before it looks for an engine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import stat
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.containers import mounts as M
from consist.hashing import dumps, hash_canonical
from consist.integrations import containers as C


def refused(path: Path) -> bool:
    try:
        M.check_sensitive(path)
    except consist.PathNotAllowedError:
        return True
    return False


# --------------------------------------------------------------------- container paths


@pytest.mark.parametrize("path", ["/data", "/in-put_1.csv", "/a/b.c@d%e+f~g", "/x/"])
def test_plain_paths(path: str) -> None:
    assert M.plain(path)


@pytest.mark.parametrize("path", ["/a,b", "/a:b", "/a=b", "/a b", "/a\nb", "relative", "//double", "", "/é"])
def test_paths_an_engine_would_parse_are_not_plain(path: str) -> None:
    assert not M.plain(path)


def test_container_paths_are_absolute_plain_and_normalised() -> None:
    assert M.check_container_path("/data/./in/", "h") == "/data/in"
    assert M.check_container_path("/a/b/../c", "h") == "/a/c"
    for bad in ("data", "./data", 5, None):
        with pytest.raises(consist.ConsistError) as err:
            M.check_container_path(bad, "./host")
        assert str(err.value) == (
            f"Container path {bad!r} for host path './host' is not absolute. "
            'Fix: map host paths to absolute container paths, e.g. {"./data": "/inputs"}.'
        )
    for bad in ("/", "/.", "/..", "//data", "/a,b", "/in:ro", "/a\n/b"):
        with pytest.raises(consist.ConsistError, match="is not allowed") as err:
            M.check_container_path(bad, "h")
        assert "choose a plain path such as /inputs" in str(err.value)


# --------------------------------------------------------------------- volume forms


def test_volume_forms(tmp_path: Path) -> None:
    assert M.normalize_volumes(None) == []
    assert M.normalize_volumes({}) == []
    assert M.normalize_volumes({"./d": "/in", tmp_path: "/t"}) == [("./d", "/in", False), (str(tmp_path), "/t", False)]
    assert M.normalize_volumes(["./d:/in", "./o:/out:ro", "./w:/w:rw"]) == [
        ("./d", "/in", False),
        ("./o", "/out", True),
        ("./w", "/w", False),
    ]
    assert M.normalize_volumes("./d:/in:ro") == [("./d", "/in", True)]


@pytest.mark.parametrize("item", ["./d", "./d:/in:rx", "a:b:c:d", ":/in", "./d:", ""])
def test_unreadable_volume_strings(item: str) -> None:
    with pytest.raises(consist.ConsistError, match="Cannot read the volume") as err:
        M.normalize_volumes([item])
    assert "pass a dict instead" in str(err.value)


def test_a_volume_list_of_something_else() -> None:
    with pytest.raises(consist.ConsistError) as err:
        M.normalize_volumes([("./d", "/in")])
    assert "each entry must be a 'host:container' or 'host:container:ro' string" in str(err.value)
    with pytest.raises(consist.ConsistError) as err:
        M.normalize_volumes(["./data:/in:ro:x"])
    assert 'volumes={"./data": "/inputs"}' in str(err.value)


# --------------------------------------------------------------------- host paths


def test_host_paths_resolve_against_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert M.resolve_host("real") == tmp_path / "real"
    assert M.resolve_host("./link/../real") == tmp_path / "real"
    assert M.resolve_host(Path("link")) == tmp_path / "real"
    assert M.resolve_host("~") == Path.home().resolve()
    for bad in ("", "a\0b"):
        with pytest.raises(consist.ConsistError, match="is empty or holds a NUL byte"):
            M.resolve_host(bad)


def test_sensitive_paths_are_refused(tmp_path: Path) -> None:
    denied = [
        "/", "/etc", "/etc/ssl", "/usr", "/usr/lib", "/proc", "/sys/kernel", "/dev", "/boot", "/bin",
        "/var/lib/docker", "/var/lib/containers/storage", "/run/containerd", "/run/user/0",
        "/var/lib/apptainer", "/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock",
    ]  # fmt: skip
    for path in denied:
        assert refused(Path(path)), path
    # Containing a denied path is as bad as being one: /var holds /var/lib/docker, /run the sockets.
    assert refused(Path("/var")) and refused(Path("/run")) and refused(Path("/var/lib"))
    assert not refused(tmp_path) and not refused(tmp_path / "data")
    assert not refused(Path("/var/tmp/data")) and not refused(Path("/srv/models"))
    assert not refused(Path("/usrdata")) and not refused(Path("/etcetera"))  # a prefix is not a parent


def test_homes_and_their_ancestors_are_refused() -> None:
    home = Path.home().resolve()
    assert refused(home) and refused(home.parent)
    assert home in M._homes()
    for user in pwd.getpwall():
        h = Path(user.pw_dir)
        if (user.pw_uid == 0 or user.pw_uid >= 1000) and h.is_dir() and h.resolve() != Path("/"):
            assert h.resolve() in M._homes() and refused(h.resolve()), user.pw_name
    assert all(h.is_dir() and h != Path("/") for h in M._homes())
    assert Path("/nonexistent") not in M._homes()


def test_homes_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "users" / "alice"
    fake.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(fake))
    assert fake in M._homes()
    assert refused(fake) and refused(tmp_path / "users") and not refused(fake / "project")
    monkeypatch.setenv("HOME", str(tmp_path / "gone"))
    assert tmp_path / "gone" not in M._homes()


def test_sensitive_refusal_message(tmp_path: Path) -> None:
    with pytest.raises(consist.PathNotAllowedError) as err:
        M.check_sensitive(Path("/etc"), "output")
    assert str(err.value).startswith("Refusing to mount output /etc into a container. Likely cause: it is the file")
    assert "pass strict_mounts=False to lift this check" in str(err.value)
    with pytest.raises(consist.PathNotAllowedError, match="Refusing to mount host path /etc"):
        M.check_sensitive(Path("/etc"))


def test_allowed_roots(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    M.check_under_roots(tmp_path / "a", roots)
    M.check_under_roots(tmp_path / "b" / "deep" / "er", iter(roots))
    with pytest.raises(consist.PathNotAllowedError) as err:
        M.check_under_roots(tmp_path / "ab", roots)  # a prefix is not a parent
    assert str(err.value).startswith(
        f"The host path {tmp_path / 'ab'} lies outside the allowed roots ({tmp_path / 'a'}, {tmp_path / 'b'})."
    )
    assert f'mounts={{"data": "{tmp_path / "ab"}"}}' in str(err.value)
    with pytest.raises(consist.PathNotAllowedError, match="The volume /x lies outside"):
        M.check_under_roots(Path("/x"), roots, "volume")


# --------------------------------------------------------------------- planning mounts


def test_plan_mounts_checks_every_volume(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    plan = M.plan_mounts(["./data:/in/:ro", "out:/out"], roots=[tmp_path], strict=True)
    assert plan == [
        M.Mount(tmp_path / "data", "/in", True, str(tmp_path / "data")),
        M.Mount(tmp_path / "out", "/out", False, str(tmp_path / "out")),
    ]
    assert M.plan_mounts(None, roots=[tmp_path], strict=True) == []
    with pytest.raises(consist.ConsistError) as err:
        M.plan_mounts({"./a": "/same", "./b": "/same/"}, roots=[tmp_path], strict=True)
    assert str(err.value) == "Two volumes map to the container path '/same'. Fix: use distinct paths."
    with pytest.raises(consist.PathNotAllowedError, match="Refusing"):
        M.plan_mounts({"/etc": "/cfg"}, roots=[Path("/")], strict=True)
    with pytest.raises(consist.PathNotAllowedError, match="outside the allowed roots"):
        M.plan_mounts({str(tmp_path): "/t"}, roots=[tmp_path / "sub"], strict=True)
    loose = M.plan_mounts({"/etc": "/cfg"}, roots=[], strict=False)
    assert loose == [M.Mount(Path("/etc"), "/cfg", False, "/etc")]
    with pytest.raises(consist.ConsistError, match="is not absolute"):
        M.plan_mounts({"./a": "rel"}, roots=[tmp_path], strict=False)


def test_mount_source_defaults_to_the_host_path(tmp_path: Path) -> None:
    assert M.Mount(tmp_path, "/in").source == str(tmp_path)
    assert M.Mount(tmp_path, "/in", source="/elsewhere").source == "/elsewhere"


def test_staging_links_only_paths_an_engine_could_misread(tmp_path: Path) -> None:
    plain_dir, odd_dir = tmp_path / "plain", tmp_path / "odd,dir:x"
    plain_dir.mkdir()
    odd_dir.mkdir()
    staging = M.Staging(tmp_path / "staging")
    untouched = staging.apply([M.Mount(plain_dir, "/p")])
    assert untouched == [M.Mount(plain_dir, "/p")] and staging.dir is None
    assert not (tmp_path / "staging").exists()
    staged = staging.apply([M.Mount(plain_dir, "/p"), M.Mount(odd_dir, "/o", True)])
    assert staged[0] == M.Mount(plain_dir, "/p")
    link = Path(staged[1].source)
    assert (staged[1].host, staged[1].container, staged[1].read_only) == (odd_dir, "/o", True)
    assert link.parent == staging.dir and link.name == "m1" and M.plain(str(link))
    assert link.is_symlink() and os.readlink(link) == str(odd_dir)
    assert staging.dir.parent == tmp_path / "staging"
    assert stat.S_IMODE(staging.dir.stat().st_mode) == 0o700
    made = staging.dir
    staging.cleanup()
    assert not made.exists() and staging.dir is None
    staging.cleanup()  # nothing left to remove


def test_mount_arguments_read_back_must_match_the_plan(tmp_path: Path) -> None:
    mounts = [M.Mount(tmp_path, "/in", True)]
    M.check_mount_args([(str(tmp_path), "/in", True)], mounts)
    for wrong in ([], [(str(tmp_path), "/in", False)], [(str(tmp_path), "/in", True), ("/x", "/y", False)]):
        with pytest.raises(consist.ConsistError) as err:
            M.check_mount_args(wrong, mounts)
        assert "would not mount exactly the planned volumes" in str(err.value)
        assert f"planned {[(str(tmp_path), '/in', True)]}, the command says {wrong}" in str(err.value)


# --------------------------------------------------------------------- run_container's own checks


def test_command_forms_and_limits() -> None:
    assert C._command("python model.py --name 'a b'") == ["python", "model.py", "--name", "a b"]
    assert C._command(("sh", "-c", "true")) == ["sh", "-c", "true"]
    assert C._command(["x" * 100_000]) == ["x" * 100_000]
    with pytest.raises(consist.ConsistError, match="The container command is empty"):
        C._command("")
    with pytest.raises(consist.ConsistError, match="The container command is empty"):
        C._command([])
    with pytest.raises(consist.ConsistError) as err:
        C._command(["run", 5])
    assert str(err.value) == (
        "Command arguments must be strings, got 5 (int). Fix: convert numbers and paths with str()."
    )
    with pytest.raises(consist.ConsistError, match="contains a NUL byte"):
        C._command(["a\0b"])
    with pytest.raises(consist.ConsistError, match="longer than 100,000 characters"):
        C._command(["x" * 50_000, "y" * 50_001])


def test_plan_outputs_forms_and_roots(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()
    assert C.plan_outputs(t, None, True) == ({}, {})
    paths, written = C.plan_outputs(t, ["out/a.csv", Path("out/b")], True)
    assert paths == {"a.csv": tmp_path / "out" / "a.csv", "b": tmp_path / "out" / "b"}
    assert written == {"a.csv": "out/a.csv", "b": "out/b"}
    assert C.plan_outputs(t, "out/a.csv", True)[0] == {"a.csv": tmp_path / "out" / "a.csv"}
    assert C.plan_outputs(t, {1: "x.csv"}, True)[0] == {"1": tmp_path / "x.csv"}
    with pytest.raises(consist.ConsistError, match=r"Two outputs share the artifact key 'a\.csv'"):
        C.plan_outputs(t, ["one/a.csv", "two/a.csv"], True)
    outside = tmp_path.parent / "elsewhere.csv"
    with pytest.raises(consist.PathNotAllowedError) as err:
        C.plan_outputs(t, [str(outside)], True)
    assert str(err.value).startswith(f"Container output path {outside} is outside run_dir and the allowed roots")
    assert "allow_external_paths=True (or CONSIST_ALLOW_EXTERNAL_PATHS=1)" in str(err.value)
    assert C.plan_outputs(t, [str(outside)], False)[0] == {"elsewhere.csv": outside}
    free = make_tracker(run_dir="free_runs", allow_external_paths=True)
    assert C.plan_outputs(free, [str(outside)], True)[0] == {"elsewhere.csv": outside}
    mounted = make_tracker(run_dir="m_runs", mounts={"data": tmp_path.parent})
    assert C.plan_outputs(mounted, [str(outside)], True)[0] == {"elsewhere.csv": outside}
    assert C._allowed_roots(mounted) == [mounted.run_dir, mounted.project_root, tmp_path.parent]


def test_plan_mounts_uses_the_tracker_roots(make_tracker, tmp_path: Path) -> None:
    inner = tmp_path / "project"
    (inner / "data").mkdir(parents=True)
    t = make_tracker(run_dir=inner / "runs", project_root=inner)
    assert C.plan_mounts(t, {str(inner / "data"): "/d"}, True)[0].host == inner / "data"
    assert C.plan_mounts(t, {str(inner / "runs" / "x"): "/r"}, True)[0].host == inner / "runs" / "x"
    with pytest.raises(consist.PathNotAllowedError):
        C.plan_mounts(t, {str(tmp_path): "/t"}, True)
    with_mount = make_tracker(run_dir=inner / "runs", project_root=inner, mounts={"all": tmp_path})
    assert C.plan_mounts(with_mount, {str(tmp_path): "/t"}, True)[0].host == tmp_path


def test_refused_mounts_stop_run_container_before_any_engine(tracker: Tracker, tmp_path: Path) -> None:
    os.symlink("/etc", tmp_path / "innocent")
    for volumes in ({"/etc": "/cfg"}, {"./innocent": "/cfg"}, {str(tmp_path.parent): "/up"}, ["/:/host"]):
        with pytest.raises(consist.PathNotAllowedError):
            C.run_container(tracker, "x", "no-such/image:1", ["true"], volumes, [], [], backend_type="no-engine")
    with pytest.raises(consist.PathNotAllowedError, match="Container output path"):
        C.run_container(tracker, "x", "img:1", ["true"], {}, [], [str(tmp_path.parent / "o")], backend_type="no")
    with pytest.raises(consist.ConsistError, match="is not absolute"):
        C.run_container(tracker, "x", "img:1", ["true"], {"./d": "d"}, [], [], backend_type="no-engine")
    assert tracker._index.query("SELECT * FROM run") == []


# --------------------------------------------------------------------- the environment's part of the key


def test_no_environment_hashes_alike_everywhere(make_tracker) -> None:
    t = make_tracker()
    empty = hash_canonical([], "consist-env-names-v1")
    assert C.environment_hash(t, {}) == empty == C.environment_hash(None, {})
    assert not (t._index.path.parent / "env.key").exists()  # no key is made for an empty environment


def test_environment_hash_is_an_hmac_of_sorted_names_and_values(make_tracker, tmp_path: Path) -> None:
    env = {"B": "2", "A": "1"}
    body = dumps(sorted(env.items())).encode()
    assert body == b'[["A","1"],["B","2"]]'
    expected_plain = "hmac-sha256:" + hmac.new(b"consist-no-tracker", body, hashlib.sha256).hexdigest()
    assert C.environment_hash(None, env) == expected_plain
    t = make_tracker()
    key_file = t._index.path.parent / "env.key"
    digest = C.environment_hash(t, env)
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert digest == "hmac-sha256:" + hmac.new(key, body, hashlib.sha256).hexdigest()
    assert C.environment_hash(t, {"A": "1", "B": "2"}) == digest
    assert C.environment_hash(t, {"A": "1", "B": "3"}) != digest
    assert sorted(p.name for p in key_file.parent.iterdir() if p.name.startswith("env.key")) == ["env.key"]


def test_trackers_sharing_a_database_share_the_key(make_tracker, tmp_path: Path) -> None:
    a = make_tracker(run_dir="a")
    b = make_tracker(run_dir="b")
    other = make_tracker(run_dir="c", db_path=tmp_path / "other.duckdb")
    env = {"TOKEN": "s3cret"}
    assert C.environment_hash(a, env) == C.environment_hash(b, env)
    assert C.environment_hash(other, env) != C.environment_hash(a, env)
    assert C._env_key(a) == C._env_key(b) == (a._index.path.parent / "env.key").read_bytes()
    for t in (a, b, other):
        for f in t._index.path.parent.iterdir():
            assert b"s3cret" not in f.read_bytes(), f


# --------------------------------------------------------------------- details of the rules


def test_only_root_and_login_users_homes_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the caller's home is elsewhere: root's comes from the user table
    root_home = Path(pwd.getpwuid(0).pw_dir).resolve()
    if root_home != Path("/") and root_home.is_dir():
        assert root_home in M._homes() and refused(root_home)
    denied = [Path(d) for d in M.DENIED]
    for user in pwd.getpwall():
        home = Path(user.pw_dir)
        if 0 < user.pw_uid < 1000 and home.is_dir() and home.resolve() != Path("/"):
            h = home.resolve()
            if not any(h == d or h.is_relative_to(d) or d.is_relative_to(h) for d in denied):
                assert h not in M._homes() and not refused(h), user.pw_name  # a system account's home


def test_a_home_that_is_a_link_loop_does_not_break_the_mount_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    monkeypatch.setenv("HOME", str(loop))
    assert not refused(tmp_path / "data")


def test_volume_error_messages_read_in_full(tmp_path: Path) -> None:
    with pytest.raises(consist.ConsistError) as err:
        M.normalize_volumes([5])
    assert str(err.value) == (
        "Cannot read the volume 5. Likely cause: volumes is a list, so each entry must be a 'host:container' "
        "or 'host:container:ro' string. Fix: pass a dict instead: "
        'volumes={"./data": "/inputs", "./outputs": "/outputs"}.'
    )
    with pytest.raises(consist.ConsistError) as err:
        M.normalize_volumes(["models:/a:/b"])
    assert str(err.value) == (
        "Cannot read the volume 'models:/a:/b'. Likely cause: the list form is 'host:container' or "
        "'host:container:ro', with no other ':'. Fix: pass a dict instead: volumes={\"models\": \"/inputs\"}."
    )
    with pytest.raises(consist.ConsistError) as err:
        M.check_container_path("/a,b", "./host")
    assert str(err.value) == (
        "Container path '/a,b' is not allowed. Likely cause: container paths may hold only letters, digits and "
        ". _ - @ % + ~ /, and may not be '/' itself: an engine would read ',' ':' '=' or a line break as the "
        "start of another mount option. Fix: choose a plain path such as /inputs."
    )
    with pytest.raises(consist.ConsistError) as err:
        M.plan_mounts({"./data": "inputs"}, roots=[tmp_path], strict=True)
    assert str(err.value).startswith("Container path 'inputs' for host path './data' is not absolute.")
    with pytest.raises(consist.ConsistError) as err:
        M.resolve_host("")
    assert str(err.value) == "Host path '' is empty or holds a NUL byte. Fix: pass a real directory."


def test_path_refusal_messages_read_in_full(tmp_path: Path) -> None:
    with pytest.raises(consist.PathNotAllowedError) as err:
        M.check_sensitive(Path("/etc"))
    assert str(err.value) == (
        "Refusing to mount host path /etc into a container. Likely cause: it is the file system root, a home "
        "directory (or contains one), a system directory, or an engine socket or engine state directory (or "
        "contains one). Fix: mount only the data folders the tool needs; pass strict_mounts=False to lift "
        "this check."
    )
    with pytest.raises(consist.PathNotAllowedError) as err:
        M.check_under_roots(Path("/srv/x"), [tmp_path])
    assert str(err.value) == (
        f"The host path /srv/x lies outside the allowed roots ({tmp_path}). Likely cause: strict_mounts=True "
        "lets containers see only the run_dir, the project root and the tracker's mounts. Fix: add it to the "
        'tracker\'s mounts (Tracker(..., mounts={"data": "/srv/x"})), or pass strict_mounts=False.'
    )
    with pytest.raises(consist.ConsistError) as err:
        M.check_mount_args([], [M.Mount(tmp_path, "/in")])
    assert str(err.value) == (
        "The engine command would not mount exactly the planned volumes. Likely cause: planned "
        f"[('{tmp_path}', '/in', False)], the command says []. Fix: report this as a bug in consist; meanwhile "
        "use plain directory names."
    )


def test_staging_directories_are_made_as_needed_and_shared(tmp_path: Path) -> None:
    odd = tmp_path / "odd:dir"
    odd.mkdir()
    base = tmp_path / "deep" / "er" / "staging"
    first, second = M.Staging(base), M.Staging(base)
    a = first.apply([M.Mount(odd, "/o")])
    b = second.apply([M.Mount(odd, "/o")])
    assert first.dir != second.dir and first.dir.parent == second.dir.parent == base
    assert Path(a[0].source).resolve() == Path(b[0].source).resolve() == odd
    first.cleanup()
    second.cleanup()
    assert list(base.iterdir()) == []


def test_command_and_output_messages_read_in_full(make_tracker, tmp_path: Path) -> None:
    expected = {
        "": 'The container command is empty. Fix: pass a list such as ["python", "model.py"].',
        "a\0b": "A command argument contains a NUL byte. Fix: remove it.",
        "x" * 100_001: "The container command is longer than 100,000 characters. Likely cause: configuration "
        "passed on the command line. Fix: write it to a file, mount the file and pass it via inputs=.",
    }
    for command, message in expected.items():
        with pytest.raises(consist.ConsistError) as err:
            C._command([command] if command else [])
        assert str(err.value) == message
    t = make_tracker()
    with pytest.raises(consist.ConsistError) as err:
        C.plan_outputs(t, ["a/x.csv", "b/x.csv"], True)
    assert (
        str(err.value) == "Two outputs share the artifact key 'x.csv'. Fix: pass outputs as a dict with distinct keys."
    )
    outside = tmp_path.parent / "o.csv"
    with pytest.raises(consist.PathNotAllowedError) as err:
        C.plan_outputs(t, [str(outside)], True)
    assert str(err.value) == (
        f"Container output path {outside} is outside run_dir and the allowed roots. Likely cause: outputs are "
        "kept under the tracker's run_dir, project root or mounts. Fix: move the output there, or set "
        "allow_external_paths=True (or CONSIST_ALLOW_EXTERNAL_PATHS=1)."
    )


def test_an_output_that_is_a_link_is_planned_as_the_link(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "target.csv").write_text("t")
    (tmp_path / "via").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "link.csv").symlink_to(tmp_path / "real" / "target.csv")
    paths, _ = C.plan_outputs(t, ["via/link.csv"], True)
    assert paths == {"link.csv": tmp_path / "real" / "link.csv"}  # its folder resolved, the link kept
    assert C.plan_outputs(t, {"root": "/"}, False)[0] == {"root": Path("/")}


def test_the_user_database_is_read_again_only_when_etc_passwd_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = pwd.getpwall
    monkeypatch.setattr(pwd, "getpwall", lambda: (calls.append(1), real())[1])
    monkeypatch.setattr(M, "_LOGIN_HOMES", (None, []))
    first = M._login_homes()
    assert M._login_homes() == first and len(calls) == 1  # unchanged: read once
    st = os.stat("/etc/passwd")
    assert M._LOGIN_HOMES[0] == (st.st_ino, st.st_size, st.st_mtime_ns)
    monkeypatch.setattr(M, "_LOGIN_HOMES", ((st.st_ino, st.st_size + 1, st.st_mtime_ns), []))  # as if edited
    assert M._login_homes() == first and len(calls) == 2
    assert Path(pwd.getpwuid(0).pw_dir) in first  # root's home always counts


def test_under_compares_whole_path_components_and_knows_the_root() -> None:
    assert M._under(Path("/data/x"), Path("/"))  # everything lies under the file system root
    assert M._under(Path("/"), Path("/"))
    assert M._under(Path("/data/x"), Path("/data")) and M._under(Path("/data"), Path("/data"))
    assert not M._under(Path("/database"), Path("/data"))  # a longer name is not inside
    assert not M._under(Path("/data"), Path("/data/x"))


def test_which_users_homes_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    homes = {uid: tmp_path / f"u{uid}" for uid in (0, 999, 1000, 1001)}
    for h in homes.values():
        h.mkdir()
    users = [pwd.struct_passwd((f"u{uid}", "x", uid, uid, "", str(h), "/bin/sh")) for uid, h in homes.items()]
    users.append(pwd.struct_passwd(("slash", "x", 1002, 1002, "", "/", "/bin/sh")))  # a home of "/" never counts
    monkeypatch.setattr(pwd, "getpwall", lambda: users)
    monkeypatch.setattr(M, "_LOGIN_HOMES", (None, []))
    monkeypatch.setenv("HOME", str(homes[1001]))
    got = set(M._homes())
    assert got == {homes[0].resolve(), homes[1000].resolve(), homes[1001].resolve()}  # root and uid >= 1000
    assert Path("/") not in got


def test_homes_without_a_readable_user_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken():  # type: ignore[no-untyped-def]
        calls.append(1)
        raise KeyError("no user database")

    real_stat = os.stat

    def no_passwd(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) == "/etc/passwd":
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(pwd, "getpwall", broken)
    monkeypatch.setattr(M.os, "stat", no_passwd)
    monkeypatch.setattr(M, "_LOGIN_HOMES", (None, []))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert M._homes() == [tmp_path.resolve()]  # the caller's home still counts
    assert M._homes() == [tmp_path.resolve()]
    assert len(calls) == 2  # without /etc/passwd to watch, the database is asked every time


@pytest.mark.parametrize("path", ["/in\n", "/data/x\n", "/in\n/more"])
def test_a_line_break_anywhere_makes_a_path_not_plain(path: str) -> None:
    assert not M.plain(path)  # a final one too: engines read it as the start of another option
    with pytest.raises(consist.ConsistError, match="is not allowed"):
        M.check_container_path(path, "./data")
