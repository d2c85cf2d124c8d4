"""Attacks on run_container's boundaries, on every engine: mounts, names, environment, images."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.containers import ContainerSpec, ImageRef, Mount, get_backend
from consist.integrations.containers import run_container
from engines import image, need

ENGINES = ["docker", "podman", "apptainer"]


def counter_runs() -> int:
    f = Path("counter/n")
    return len(f.read_text().splitlines()) if f.exists() else 0


@pytest.fixture
def workdir() -> Path:
    for d in ("data", "outputs", "counter"):
        Path(d).mkdir(exist_ok=True)
    Path("data/marker").write_text("the data folder\n")
    return Path.cwd()


# ----------------------------------------------------------------------------- 1. mount option injection


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "target", ["/inputs,source=/etc", "/inputs:/etc", "/in=puts", "/inputs\n/etc", "/", "/inputs,readonly"]
)
def test_container_paths_that_could_add_mount_options_are_refused(engine: str, target: str, tracker, workdir) -> None:
    need(engine)
    with pytest.raises(consist.ConsistError, match=r"not allowed|not absolute"):
        run_container(
            tracker, "inj", image(engine), ["sh", "-c", "echo run >> /counter/n"],
            {"./data": target, "./counter": "/counter"}, [], [], backend_type=engine,
        )  # fmt: skip
    assert counter_runs() == 0 and tracker.find_runs() == []


HOSTILE_DIRS = ["data,source=etc", "we:ird=dir", "line\nbreak", "comma, space:ro"]


@pytest.mark.parametrize("engine", ENGINES)
def test_host_paths_with_engine_syntax_mount_exactly_that_folder(engine: str, tracker, workdir) -> None:
    """Any character in a host path: the container sees that folder, never something else."""
    need(engine)
    for i, name in enumerate(HOSTILE_DIRS):
        d = Path(name)
        d.mkdir()
        (d / "marker").write_text(f"hostile {i}\n")
        out = Path(f"outputs/seen{i}")
        cmd = [
            "sh",
            "-c",
            f"cat /inputs/marker > /outputs/seen{i}; test -e /inputs/passwd && echo LEAK >> /outputs/seen{i}; true",
        ]
        r = run_container(
            tracker, f"hostile{i}", image(engine), cmd, {str(d): "/inputs", "./outputs": "/outputs"}, [d / "marker"],
            [str(out)], backend_type=engine,
        )  # fmt: skip
        assert out.read_text() == f"hostile {i}\n", f"{name!r}: {out.read_text()!r}"
        assert not r.cache_hit
    assert not (tracker.run_dir / ".consist" / "staging").exists() or not any(
        (tracker.run_dir / ".consist" / "staging").iterdir()
    ), "staging links must be removed after the run"


@pytest.mark.parametrize("engine", ENGINES)
def test_finished_argv_is_checked_against_the_planned_mounts(engine: str) -> None:
    """Even a mount that reached the backend unstaged cannot smuggle an option through."""
    need(engine)
    backend = get_backend(engine)
    ref = ImageRef("img", "sha256:" + "0" * 64, "img", "pinned")
    good = Mount(Path("/srv/data"), "/inputs", read_only=True)
    argv = backend.argv(ContainerSpec(ref, ("true",), (good,), {}))
    assert backend.mounts_in(argv) == [("/srv/data", "/inputs", True)]
    smuggled = ["/srv/data,target=/etc", "/srv/x,readonly=false", "/srv/x,type=volume"]
    if engine == "apptainer":
        smuggled += ["/srv/a:/etc", "/srv/a:/b:rw"]  # ':' separates apptainer's bind fields
    for bad_source in smuggled:
        bad = Mount(Path("/srv/data"), "/inputs", source=bad_source)
        with pytest.raises(consist.ConsistError, match="exactly the planned volumes"):
            backend.argv(ContainerSpec(ref, ("true",), (bad,), {}))
    # The tool's own arguments may look like mount options: they are not the engine's.
    argv = backend.argv(ContainerSpec(ref, ("tool", "--mount", "x,y", "--bind", "a:b:c"), (good,), {}))
    assert argv[-4:] == ["--mount", "x,y", "--bind", "a:b:c"]


# ----------------------------------------------------------------------------- 3. deny-list parents


@pytest.mark.parametrize("engine", ENGINES)
def test_parents_of_engine_state_are_refused_even_inside_allowed_roots(engine: str, make_tracker, workdir) -> None:
    need(engine)
    t = make_tracker(mounts={"all": "/"})
    os.symlink("/var", "innocent-looking")
    for path in ["/var", "/var/run", "/run", "/var/lib", "/usr/local", "./innocent-looking", "/home"]:
        with pytest.raises(consist.PathNotAllowedError, match="Refusing to mount"):
            run_container(t, "deny", image(engine), ["true"], {path: "/host"}, [], [], backend_type=engine)
    assert t.find_runs() == []


# ----------------------------------------------------------------------------- 4. run ids


BAD_IDS = ["../../x", "/tmp/abs", "a/b", "", "..", ".hidden", "x" * 201, "tab\there", "new\nline", "a\\b"]


@pytest.mark.parametrize("engine", ENGINES)
def test_run_ids_cannot_name_a_path(engine: str, tracker: Tracker, workdir, tmp_path: Path) -> None:
    need(engine)
    for bad in BAD_IDS:
        with pytest.raises(consist.InvalidNameError) as info:
            run_container(tracker, bad, image(engine), ["true"], {"./counter": "/counter"}, [], [], backend_type=engine)
        assert isinstance(info.value, ValueError)
    assert tracker.find_runs() == []
    assert not (tmp_path.parent / "x").exists() and not Path("/tmp/abs").exists()


def test_run_ids_and_names_are_checked_at_every_entry_point(tracker: Tracker) -> None:
    for bad in ("../x", "/abs", "a/b", ".."):
        with pytest.raises(consist.InvalidNameError):
            tracker.run(lambda: None, run_id=bad)
        with pytest.raises(consist.InvalidNameError):
            tracker.run(lambda: None, name=bad)
        with pytest.raises(consist.InvalidNameError):
            tracker.begin_run(bad, "m")
        with pytest.raises(consist.InvalidNameError):
            with tracker.start_run(bad, "m"):
                pass
        with pytest.raises(consist.InvalidNameError):
            with tracker.scenario(bad):
                pass
    with consist.use_tracker(tracker), consist.scenario("fine") as sc:
        with pytest.raises(consist.InvalidNameError):
            with sc.trace("../step"):
                pass
    # Names made from functions are fitted, not refused.
    r = tracker.run(lambda: None)
    assert r.run_id.startswith("lambda_") and "<" not in r.run_id
    assert tracker.run(lambda: None, run_id="ok.name-1~x").run_id == "ok.name-1~x"


# ----------------------------------------------------------------------------- 5. the engine's own environment


@pytest.mark.parametrize("engine", ENGINES)
def test_container_environment_reaches_only_the_container(engine: str, tracker: Tracker, workdir) -> None:
    need(engine)
    env = {
        "PATH": "/bin:/opt/custom/bin",
        "HOME": "/nowhere",
        "LD_PRELOAD": "/nonexistent/evil.so",
        "DOCKER_HOST": "tcp://127.0.0.1:9",
        "CONTAINER_HOST": "tcp://127.0.0.1:9",
        "APPTAINER_BINDPATH": "/etc:/hostetc",
        "VALUE": "a b=c $HOME $(id) `id` \\$x \\ 'q' \"dq\" ünï",
    }
    if engine == "apptainer":
        with pytest.raises(consist.ContainerError, match="HOME"):
            run_container(tracker, "home", image(engine), ["true"], {}, [], [], environment=env, backend_type=engine)
        del env["HOME"]  # Apptainer always sets HOME itself: refused above rather than silently ignored
    cmd = ["sh", "-c", 'printf "%s|%s|%s\\n" "$PATH" "$DOCKER_HOST" "$VALUE" > /outputs/env; '
                       "test -e /hostetc/passwd && echo LEAK >> /outputs/env; true"]  # fmt: skip
    r = run_container(
        tracker, "env", image(engine), cmd, {"./outputs": "/outputs"}, [], ["./outputs/env"], environment=env,
        backend_type=engine,
    )  # fmt: skip
    assert not r.cache_hit
    assert Path("outputs/env").read_text() == f"/bin:/opt/custom/bin|tcp://127.0.0.1:9|{env['VALUE']}\n"
    with pytest.raises(consist.ContainerError, match="line break"):
        run_container(
            tracker, "nl", image(engine), ["true"], {}, [], [], environment={"X": "a\nb"}, backend_type=engine
        )
    with pytest.raises(consist.ContainerError, match="not valid"):
        run_container(tracker, "nm", image(engine), ["true"], {}, [], [], environment={"A-B": "1"}, backend_type=engine)


# ----------------------------------------------------------------------------- 12. volumes, images


@pytest.mark.parametrize("engine", ENGINES)
def test_docker_style_volume_list_with_read_only(engine: str, tracker: Tracker, workdir) -> None:
    need(engine)
    cmd = ["sh", "-c", "echo run >> /counter/n; (touch /inputs/new 2>/dev/null && echo writable || echo read-only) "
                       "> /outputs/mode; cat /inputs/marker >> /outputs/mode"]  # fmt: skip
    vols = ["./data:/inputs:ro", "./outputs:/outputs", "./counter:/counter"]
    r = run_container(tracker, "ro", image(engine), cmd, vols, [Path("data/marker")], ["./outputs/mode"],
                      backend_type=engine)  # fmt: skip
    assert Path("outputs/mode").read_text() == "read-only\nthe data folder\n" and not Path("data/new").exists()
    assert run_container(tracker, "ro", image(engine), cmd, vols, [Path("data/marker")], ["./outputs/mode"],
                         backend_type=engine).cache_hit and counter_runs() == 1  # fmt: skip
    assert r.manifest["container_mounts"] == ["/counter", "/inputs", "/outputs"]
    for bad in (["./data"], ["./data:/in:/x:ro"], [42]):
        with pytest.raises(consist.ConsistError, match="dict"):
            run_container(tracker, "bad", image(engine), ["true"], bad, [], [], backend_type=engine)


@pytest.mark.parametrize("bad", [None, "", 42])
def test_image_must_be_a_reference(bad, tracker: Tracker) -> None:
    with pytest.raises(consist.ConsistError, match="image must be"):
        run_container(tracker, "x", bad, ["true"], {}, [], [])


def test_podman_says_when_the_image_is_only_in_dockers_store(tracker: Tracker) -> None:
    need("docker")
    need("podman")
    tag = f"localhost:5000/consist-test/docker-only:{uuid.uuid4().hex[:8]}"  # never pushed
    subprocess.run(["docker", "tag", image("docker"), tag], check=True, timeout=60)
    try:
        with pytest.raises(consist.ImageNotFoundError, match=r"separate image stores[\s\S]*podman load"):
            run_container(tracker, "p", tag, ["true"], {}, [], [], backend_type="podman")
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, timeout=60)


# ----------------------------------------------------------------------------- 15. pull_latest, local image


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_pull_latest_falls_back_to_a_local_only_image(engine: str, tracker: Tracker, workdir, tmp_path: Path) -> None:
    need(engine)
    tag = f"localhost:5000/consist-test/local-only:{uuid.uuid4().hex[:8]}"  # the registry has no such image
    # Built here, never pushed or pulled: it has no registry digest, only its local ID.
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {image(engine)}\nLABEL local-only={tag}\n")
    subprocess.run([engine, "build", "-q", "-t", tag, str(tmp_path / "ctx")], check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    fmt = "{{.Id}} {{.Digest}}" if engine == "podman" else "{{.Id}}"  # podman also keys on its manifest digest
    ids = subprocess.run([engine, "image", "inspect", "--format", fmt, tag], capture_output=True,
                         text=True, timeout=60).stdout.split()  # fmt: skip
    try:
        cmd = ["sh", "-c", "echo run >> /counter/n"]
        with pytest.warns(consist.ConsistWarning, match=r"could not pull .*using the local image\. The cache key is"):
            r = run_container(tracker, "pl", tag, cmd, {"./counter": "/counter"}, [], [], backend_type=engine,
                              pull_latest=True)  # fmt: skip
        assert counter_runs() == 1
        assert r.image_digest.removeprefix("sha256:") in {i.removeprefix("sha256:") for i in ids}
    finally:
        subprocess.run([engine, "rmi", tag], capture_output=True, timeout=60)


# ----------------------------------------------------------------------------- 16. manifest_hash across databases


@pytest.mark.parametrize("engine", ENGINES)
def test_manifest_hash_is_the_same_on_another_database(engine: str, make_tracker, tmp_path: Path, workdir) -> None:
    need(engine)
    a = make_tracker(run_dir="a", db_path=tmp_path / "a.duckdb")
    b = make_tracker(run_dir="b", db_path=tmp_path / "b.duckdb")
    cmd = ["sh", "-c", "echo run >> /counter/n"]
    ra = run_container(a, "m", image(engine), cmd, {"./counter": "/counter"}, [], [], backend_type=engine,
                       lineage_mode="none")  # fmt: skip
    rb = run_container(b, "m", image(engine), cmd, {"./counter": "/counter"}, [], [], backend_type=engine,
                       lineage_mode="none")  # fmt: skip
    assert ra.manifest_hash == rb.manifest_hash and counter_runs() == 2
    with_env = [
        run_container(t, "m", image(engine), cmd, {"./counter": "/counter"}, [], [], backend_type=engine,
                      lineage_mode="none", environment={"K": "v"}).manifest_hash
        for t in (a, b)
    ]  # fmt: skip
    assert with_env[0] != ra.manifest_hash  # values count, through each database's own key


# ----------------------------------------------------------------------------- 17. the image's working directory


@pytest.fixture(scope="module")
def workdir_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An image whose WORKDIR is /app, holding /app/model.sh: as a Docker image, a pushed
    registry image and a SIF built from it (the way HPC users build theirs)."""
    need("docker")
    need("apptainer")
    ctx = tmp_path_factory.mktemp("workdir-image")
    (ctx / "Dockerfile").write_text(
        f"FROM {image('docker')}\nWORKDIR /app\nRUN printf 'pwd > /outputs/pwd\\n' > /app/model.sh\n"
    )
    tag = f"consist-test/workdir:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True, timeout=300)
    subprocess.run(["docker", "save", "-o", str(ctx / "img.tar"), tag], check=True, timeout=300)
    sif_path = ctx / "model.sif"
    subprocess.run(["apptainer", "-q", "build", str(sif_path), f"docker-archive://{ctx / 'img.tar'}"], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    pushed = f"127.0.0.1:5000/ci/workdir:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "tag", tag, pushed], check=True, timeout=60)
    subprocess.run(["docker", "push", pushed], check=True, capture_output=True, timeout=300)
    yield {"docker": tag, "sif": str(sif_path), "registry": pushed}
    subprocess.run(["docker", "rmi", tag, pushed], capture_output=True, timeout=120)


@pytest.mark.parametrize("kind", ["docker", "sif", "docker-uri"])
def test_a_relative_command_runs_in_the_images_working_directory(
    kind: str, workdir_image, tracker: Tracker, workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide's `python model.py`: relative to the image's WORKDIR, on Apptainer as on Docker."""
    monkeypatch.setenv("APPTAINER_NOHTTPS", "1")  # the loopback registry speaks plain HTTP
    img, backend = {
        "docker": (workdir_image["docker"], "docker"),
        "sif": (workdir_image["sif"], "apptainer"),
        "docker-uri": (f"docker://{workdir_image['registry']}", "apptainer"),
    }[kind]
    r = run_container(tracker, "wd", img, ["sh", "model.sh"], {"./outputs": "/outputs"}, [], ["./outputs/pwd"],
                      backend_type=backend)  # fmt: skip
    assert Path("outputs/pwd").read_text().strip() == "/app" and not r.cache_hit
    explicit = ["sh", "-c", "pwd > /outputs/pwd"]
    run_container(tracker, "wd2", img, explicit, {"./outputs": "/outputs"}, [], ["./outputs/pwd"],
                  backend_type=backend, working_dir="/tmp")  # fmt: skip
    assert Path("outputs/pwd").read_text().strip() == "/tmp"  # working_dir= still wins


def test_a_hostile_sif_header_is_ignored(tmp_path: Path) -> None:
    from consist.containers import sif

    bad = tmp_path / "bad.sif"
    header = b"#!/usr/bin/env run-singularity\n\x00" + b"SIF_MAGIC\x00" + b"01\x0002\x00" + b"\x00" * 16
    import struct

    bad.write_bytes(header + struct.pack("<8q", 0, 0, 0, 3, 10**12, 585 * 3, 0, 0))
    assert sif.working_dir(bad) is None
    bad.write_bytes(b"not a sif at all")
    assert sif.working_dir(bad) is None
