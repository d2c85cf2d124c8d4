"""run_container against real Docker, Podman and Apptainer engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.integrations.containers import run_container
from engines import facts, image, need

ENGINES = ["docker", "podman", "apptainer"]

# Appends one line per execution to /counter/n, then copies the input to the output.
COPY = ["sh", "-c", "echo run >> /counter/n; cp /inputs/input.csv /outputs/result.csv"]


def executions(root: Path = Path(".")) -> int:
    f = root / "counter" / "n"
    return len(f.read_text().splitlines()) if f.exists() else 0


def setup_data(root: Path = Path("."), text: str = "x,y\n1,2\n") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "counter").mkdir(parents=True, exist_ok=True)
    p = root / "data" / "input.csv"
    p.write_text(text)
    return p


def copy_run(tracker: Tracker, engine: str, root: Path = Path("."), **kw):
    kw.setdefault("image", image(engine))
    return run_container(
        tracker=tracker,
        run_id=kw.pop("run_id", "copy"),
        command=kw.pop("command", COPY),
        volumes={str(root / "data"): "/inputs", str(root / "outputs"): "/outputs", str(root / "counter"): "/counter"},
        inputs=[root / "data" / "input.csv"],
        outputs=kw.pop("outputs", [str(root / "outputs" / "result.csv")]),
        backend_type=kw.pop("backend_type", engine),
        **kw,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_hit_after_rerun_and_restore_after_delete(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    first = copy_run(tracker, engine)
    assert not first.cache_hit and executions() == 1
    assert first.artifacts["result.csv"].path == Path("outputs/result.csv").resolve()
    assert first.output.path.read_text() == "x,y\n1,2\n"
    assert first.image_digest.startswith("sha256:")
    second = copy_run(tracker, engine)
    assert second.cache_hit and second.cache_source == first.run_id and executions() == 1
    Path("outputs/result.csv").unlink()
    third = copy_run(tracker, engine)
    assert third.cache_hit and executions() == 1
    assert Path("outputs/result.csv").read_text() == "x,y\n1,2\n"
    run = tracker.get_run(first.run_id)
    assert run.status == "completed" and run.model == Path(image(engine)).stem.split(":")[0].split("/")[-1]


@pytest.mark.parametrize("engine", ENGINES)
def test_input_and_environment_changes_miss(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    copy_run(tracker, engine, environment={"MODE": "a"})
    assert copy_run(tracker, engine, environment={"MODE": "a"}).cache_hit
    changed_env = copy_run(tracker, engine, environment={"MODE": "b"})
    assert not changed_env.cache_hit and executions() == 2
    assert tracker.explain(changed_env.run_id)["changed"] == ["environment"]
    setup_data(text="x,y\n9,9\n")
    changed_input = copy_run(tracker, engine, environment={"MODE": "b"})
    assert not changed_input.cache_hit and executions() == 3
    assert Path("outputs/result.csv").read_text() == "x,y\n9,9\n"
    assert tracker.explain(changed_input.run_id)["details"]["inputs_changed"] == ["input.csv"]


@pytest.mark.parametrize("engine", ENGINES)
def test_different_host_root_is_a_hit(engine: str, make_tracker, tmp_path: Path) -> None:
    need(engine)
    a, b = tmp_path / "checkoutA", tmp_path / "checkoutB"
    setup_data(a)
    setup_data(b)
    ta = make_tracker(run_dir=a / "runs", project_root=a)
    first = copy_run(ta, engine, root=a)
    tb = make_tracker(run_dir=b / "runs", project_root=b)  # same database, another host root
    second = copy_run(tb, engine, root=b)
    assert second.cache_hit and second.cache_source == first.run_id
    assert executions(a) == 1 and executions(b) == 0
    assert (b / "outputs" / "result.csv").read_text() == "x,y\n1,2\n"
    assert second.artifacts["result.csv"].path == b / "outputs" / "result.csv"
    assert first.manifest_hash == second.manifest_hash


@pytest.mark.parametrize("engine", ENGINES)
def test_failing_container_raises_and_caches_nothing(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    cmd = ["sh", "-c", "echo run >> /counter/n; echo 'model diverged' >&2; exit 3"]
    with pytest.raises(RuntimeError) as info:
        copy_run(tracker, engine, command=cmd, run_id="bad")
    err = info.value
    assert isinstance(err, consist.ContainerExecutionError)
    assert err.exit_code == 3 and err.command == cmd and "model diverged" in err.stderr_tail
    run = tracker.get_run("bad")
    assert run.status == "failed" and "status 3" in run.error
    with pytest.raises(consist.ContainerExecutionError):
        copy_run(tracker, engine, command=cmd, run_id="bad")
    assert executions() == 2  # the failure was not served from the cache
    log = (tracker.run_dir / "bad" / "container.log").read_text()
    assert "model diverged" in log


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_output_warns_and_is_recorded(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    with pytest.warns(consist.ConsistWarning, match=r"Expected output not found: \./outputs/nope\.csv"):
        r = copy_run(tracker, engine, outputs=["./outputs/result.csv", "./outputs/nope.csv"])
    assert r.missing_outputs == ["nope.csv"] and set(r.artifacts) == {"result.csv"}
    assert tracker.get_run(r.run_id).meta["missing_outputs"] == ["nope.csv"]


@pytest.mark.parametrize("engine", ENGINES)
def test_secret_environment_value_never_reaches_disk(engine: str, tracker: Tracker, tmp_path: Path) -> None:
    need(engine)
    setup_data()
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    cmd = ["sh", "-c", 'test "$API_TOKEN" = "$EXPECTED" && echo ok; cp /inputs/input.csv /outputs/result.csv']
    r = copy_run(tracker, engine, command=cmd, environment={"API_TOKEN": secret, "EXPECTED": secret})
    assert "[stdout] ok" in (tracker.run_dir / r.run_id / "container.log").read_text()  # the value did arrive
    tracker.close()
    places = [tmp_path]
    places += [Path(p) for p in ("/var/lib/docker/containers", "/var/lib/containers/storage") if Path(p).exists()]
    hits = subprocess.run(["grep", "-rl", "--", secret, *map(str, places)], capture_output=True, text=True)
    found = [f for f in hits.stdout.splitlines() if f]
    if engine == "podman":
        # Podman's own state database keeps container configs in freed pages even after
        # --rm; that is podman's store, not consist's (documented in docs/containers.md).
        found = [f for f in found if not f.endswith("libpod/bolt_state.db")]
    assert found == [], f"secret found in {found}"
    assert secret not in str(r.manifest) and r.manifest["environment_keys"] == ["API_TOKEN", "EXPECTED"]


@pytest.mark.parametrize("engine", ENGINES)
def test_directory_output_is_scanned_after_exit(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    cmd = [
        "sh",
        "-c",
        "echo run >> /counter/n; mkdir -p /outputs/tables; for i in 1 2 3; do echo $i > /outputs/tables/t$i.csv; done",
    ]
    r = copy_run(tracker, engine, command=cmd, outputs=["./outputs/tables"])
    assert r.artifacts["tables"].kind == "dir" and r.artifacts["tables"].meta == {"files": 3}
    shutil.rmtree("outputs/tables")
    again = copy_run(tracker, engine, command=cmd, outputs=["./outputs/tables"])
    assert again.cache_hit and sorted(os.listdir("outputs/tables")) == ["t1.csv", "t2.csv", "t3.csv"]
    assert executions() == 1


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_retagged_image_hits_and_rebuilt_tag_misses(engine: str, tracker: Tracker, tmp_path: Path) -> None:
    need(engine)
    setup_data()
    tag = f"consist-test/rebuilt:{uuid.uuid4().hex[:8]}"
    alias = f"consist-test/alias:{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()

    def build(label: str) -> None:
        (ctx / "Dockerfile").write_text(f"FROM {image(engine)}\nLABEL build={label}\n")
        subprocess.run([engine, "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True)

    try:
        build("one")
        first = copy_run(tracker, engine, image=tag)
        subprocess.run([engine, "tag", tag, alias], check=True, capture_output=True)
        retagged = copy_run(tracker, engine, image=alias)
        assert retagged.cache_hit and retagged.image_digest == first.image_digest and executions() == 1
        build("two")  # same tag, different image
        rebuilt = copy_run(tracker, engine, image=tag)
        assert not rebuilt.cache_hit and rebuilt.image_digest != first.image_digest and executions() == 2
        assert tracker.explain(rebuilt.run_id)["changed"] == ["image_digest"]
    finally:
        subprocess.run([engine, "rmi", "-f", tag, alias], capture_output=True)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_pull_latest_keys_on_the_registry_digest(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    ref = facts()["CI_IMAGE_BUSYBOX_REF"]  # 127.0.0.1:5000/ci/busybox@sha256:...
    registry_digest = ref.split("@", 1)[1]
    tagged = ref.split("@", 1)[0] + ":test"
    r = copy_run(tracker, engine, image=tagged, pull_latest=True)
    assert r.image_digest == registry_digest
    pinned = copy_run(tracker, engine, image=ref)
    assert pinned.cache_hit and pinned.image_digest == registry_digest


def test_overwritten_sif_misses(tracker: Tracker, tmp_path: Path) -> None:
    need("apptainer")
    setup_data()
    sif = tmp_path / "my_model.sif"
    shutil.copy(facts()["CI_SIF_BUSYBOX"], sif)
    first = copy_run(tracker, "apptainer", image=str(sif), backend_type="singularity")
    assert copy_run(tracker, "apptainer", image=str(sif)).cache_hit
    assert tracker.get_run(first.run_id).model == "my_model"
    shutil.copy(facts()["CI_SIF_PYTHON"], sif)  # overwritten in place, same path
    again = copy_run(tracker, "apptainer", image=str(sif))
    assert not again.cache_hit and again.image_digest != first.image_digest and executions() == 2


def test_apptainer_docker_reference_resolves_to_registry_digest(tracker: Tracker) -> None:
    need("apptainer")
    setup_data()
    ref = facts()["CI_IMAGE_BUSYBOX_REF"]
    os.environ.setdefault("APPTAINER_NOHTTPS", "1")
    r = copy_run(tracker, "apptainer", image="docker://" + ref.split("@")[0] + ":test")
    assert r.image_digest == ref.split("@", 1)[1] and not r.cache_hit


@pytest.mark.parametrize("path", ["/etc", "/", "/var/run/docker.sock", "~", "./data/../../.."])
def test_dangerous_mounts_are_refused_before_anything_runs(path: str, tracker: Tracker) -> None:
    need("docker")
    setup_data()
    with pytest.raises(consist.PathNotAllowedError):
        run_container(tracker, "x", image("docker"), ["true"], {path: "/host"}, [], [])
    assert tracker.find_runs() == []


def test_symlink_cannot_escape_the_allowed_roots(tracker: Tracker) -> None:
    need("docker")
    os.symlink("/etc", "innocent")
    with pytest.raises(consist.PathNotAllowedError):
        run_container(tracker, "x", image("docker"), ["true"], {"./innocent": "/cfg"}, [], [])


def test_paths_outside_roots_need_mounts_or_strict_mounts_false(make_tracker, tmp_path: Path) -> None:
    need("docker")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "f.txt").write_text("f")
    inner = tmp_path / "project"
    inner.mkdir()
    t = make_tracker(run_dir=inner / "runs", project_root=inner)
    cmd = ["cat", "/data/f.txt"]
    with pytest.raises(consist.PathNotAllowedError, match="mounts"):
        run_container(t, "a", image("docker"), cmd, {str(outside): "/data"}, [], [])
    assert not run_container(
        t, "b", image("docker"), cmd, {str(outside): "/data"}, [], [], strict_mounts=False
    ).cache_hit
    t2 = make_tracker(run_dir=inner / "runs", project_root=inner, mounts={"data": outside})
    assert run_container(t2, "c", image("docker"), cmd, {str(outside): "/data"}, [], []).run_id == "c"
    with pytest.raises(consist.PathNotAllowedError, match="allow_external_paths"):
        run_container(t, "d", image("docker"), cmd, {}, [], [str(outside / "out.txt")])


def test_lineage_mode_none_records_nothing(tracker: Tracker) -> None:
    need("docker")
    setup_data()
    r = copy_run(tracker, "docker", lineage_mode="none")
    assert r.run_id is None and not r.cache_hit and r.artifacts == {}
    assert r.manifest_hash.startswith("sha256:") and executions() == 1
    assert str(Path.cwd()) not in str(r.manifest)  # host paths excluded
    assert r.manifest["container_mounts"] == ["/counter", "/inputs", "/outputs"]
    assert tracker.find_runs() == []


def test_container_inside_an_overwrite_run_reexecutes(tracker: Tracker) -> None:
    need("docker")
    setup_data()
    copy_run(tracker, "docker")
    tracker.begin_run("forced", "pipeline", cache_mode="overwrite")
    r = copy_run(tracker, "docker")
    tracker.end_run()
    assert not r.cache_hit and executions() == 2
    assert tracker.get_run(r.run_id).parent_run_id == "forced"
    assert set(tracker.get_artifacts_for_run("forced").outputs) == {"result.csv"}
    tracker.begin_run("normal", "pipeline")
    assert copy_run(tracker, "docker").cache_hit
    tracker.end_run()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_container_run_inside_another_run_gives_it_its_inputs_and_outputs(engine: str, tracker: Tracker) -> None:
    setup_data()
    write = Path("data/own.csv")
    write.write_text("own\n")
    for attempt in ("executes", "hits"):
        with tracker.start_run(f"outer_{attempt}", "pipeline", inputs={"own": "data/own.csv"}):
            r = copy_run(tracker, engine)
        assert r.cache_hit == (attempt == "hits")
        outer = tracker.get_artifacts_for_run(f"outer_{attempt}")
        inner = tracker.get_artifacts_for_run(r.run_id)
        assert set(outer.outputs) == {"result.csv"} and outer.outputs["result.csv"].hash == inner.outputs[
            "result.csv"].hash  # fmt: skip
        # The outer run keeps its own input; the container's input joins it under the container's key.
        assert outer.inputs["own"].uri == str(write.resolve())
        assert set(inner.inputs) == {"input.csv"} and set(outer.inputs) == {"own", "input.csv"}
        assert outer.inputs["input.csv"].hash == inner.inputs["input.csv"].hash
    assert executions() == 1


def test_engine_errors_are_clear_and_record_nothing(tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    need("docker")
    setup_data()
    with pytest.raises(consist.ImageNotFoundError, match="docker pull"):
        copy_run(tracker, "docker", image="localhost:5000/consist-test/does-not-exist:v9")
    if shutil.which("apptainer"):
        with pytest.raises(consist.ImageNotFoundError, match=r"\.sif path"):
            copy_run(tracker, "apptainer", image="/nowhere/model.sif")
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/no-such-docker.sock")
    with pytest.raises(consist.BackendUnavailableError, match="start the daemon"):
        copy_run(tracker, "docker")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(consist.BackendUnavailableError, match="not installed"):
        copy_run(tracker, "podman")
    with pytest.raises(consist.ContainerError, match="backend_type"):
        copy_run(tracker, "kubernetes")
    assert tracker.find_runs() == []


def test_run_as_user_and_working_dir(tracker: Tracker) -> None:
    need("docker")
    setup_data()
    cmd = ["sh", "-c", "id -u > /outputs/uid; pwd > /outputs/pwd"]
    outs = ["./outputs/uid", "./outputs/pwd"]
    r = run_container(
        tracker, "u", image("docker"), cmd, {"./outputs": "/outputs"}, [], outs, working_dir="/tmp", run_as_user=True
    )
    assert Path("outputs/uid").read_text().strip() == str(os.getuid())
    assert Path("outputs/pwd").read_text().strip() == "/tmp" and set(r.artifacts) == {"uid", "pwd"}


# ----------------------------------------------------------------------------- guarantees the
# tests above cannot see: each test below fails when its guarantee is broken.

DENIED_INSIDE_ROOTS = [
    "/etc",
    "/etc/ssl",
    "/proc/self",
    "/sys/kernel",
    "/dev/shm",
    "/var/lib/docker",
    "/run/docker.sock",
]


@pytest.mark.parametrize("engine", ENGINES)
def test_deny_list_applies_inside_allowed_roots(engine: str, make_tracker, tmp_path: Path) -> None:
    """A broad allowed root (a mount of "/") must not open system paths to containers."""
    need(engine)
    setup_data()
    t = make_tracker(mounts={"everything": "/"})  # every path below is under an allowed root
    for path in DENIED_INSIDE_ROOTS:
        with pytest.raises(consist.PathNotAllowedError, match="system directory"):
            run_container(
                t, "x", image(engine), COPY, {path: "/host", "./counter": "/counter"}, [], [], backend_type=engine
            )
    # The same tracker does accept an ordinary data folder, so the refusals above come
    # from the deny list and not from the roots.
    count = ["sh", "-c", "echo run >> /counter/n"]
    ok = run_container(t, "ok", image(engine), count, {"./counter": "/counter"}, [], [], backend_type=engine)
    assert ok.run_id == "ok" and executions() == 1
    assert [r.id for r in t.find_runs()] == ["ok"]


def _cmdlines() -> list[tuple[int, str]]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append(
                    (int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                )
            except OSError:
                continue
    return out


def _run_in_thread(fn, *args, **kwargs):
    import threading

    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _wait_for(path: Path, seconds: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.05)


def _record_engine_argv(engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a wrapper first on PATH that appends its argv to a file, then runs the real engine.

    It sees every argument list consist gives the engine, even where the engine
    replaces its own process at once (Apptainer execs its starter), so a value on
    a command line cannot hide in a moment no ``ps`` looked at.
    """
    real = shutil.which(engine)
    assert real, f"{engine} is not on PATH"
    wrap = tmp_path / "argv-recorder"
    wrap.mkdir()
    record = tmp_path / "argv.log"
    script = wrap / engine
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{record}'\nexec '{real}' \"$@\"\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrap}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize("engine", ENGINES)
def test_secret_environment_value_is_never_on_a_command_line(
    engine: str, tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No argument list given to the engine, and no process on the host while the container
    runs, shows the value."""
    need(engine)
    setup_data()
    record = _record_engine_argv(engine, tmp_path, monkeypatch)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    cmd = [
        "sh",
        "-c",
        'test "$API_TOKEN" = "$EXPECTED" && echo same > /outputs/check; touch /counter/started; '
        "i=0; while [ ! -e /counter/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    ]
    th, box = _run_in_thread(
        copy_run, tracker, engine, command=cmd, outputs=["./outputs/check"],
        environment={"API_TOKEN": secret, "EXPECTED": secret},
    )  # fmt: skip
    try:
        _wait_for(Path("counter/started"))
        seen = [(pid, line) for pid, line in _cmdlines() if secret in line]
    finally:
        Path("counter/go").touch()
        th.join(120)
    assert "error" not in box, box.get("error")
    assert seen == [], f"the secret is on a command line: {seen}"
    calls = record.read_text().splitlines()
    assert any("/counter/started" in c for c in calls), f"the container's command never reached the engine: {calls}"
    assert [c for c in calls if secret in c] == [], "the secret was passed to the engine as an argument"
    assert Path("outputs/check").read_text().strip() == "same"  # the value did reach the container


def _registry() -> str:
    reg = facts().get("CI_REGISTRY")
    assert reg, "the loopback registry is not set up (scripts/setup-containers.sh)"
    return reg


def _served_digest(ref: str) -> str:
    """The manifest digest the loopback registry serves for host/repo:tag."""
    import urllib.request

    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.headers["Docker-Content-Digest"]


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_pull_latest_runs_what_the_registry_serves_now(engine: str, tracker: Tracker, tmp_path: Path) -> None:
    """The local tag is stale (an older push): pull_latest must fetch and run the new image."""
    need(engine)
    setup_data()
    ref = f"{_registry()}/ci/pull-latest-{uuid.uuid4().hex[:8]}:v"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    tls = ["--tls-verify=false"] if engine == "podman" else []

    def sh(*args: str) -> str:
        return subprocess.run([engine, *args], check=True, capture_output=True, text=True, timeout=300).stdout.strip()

    def build_and_push(marker: str) -> str:
        (ctx / "Dockerfile").write_text(f"FROM {image(engine)}\nRUN echo {marker} > /marker\n")
        sh("build", "-q", "-t", ref, str(ctx))
        sh("push", *tls, ref)
        return sh("image", "inspect", "--format", "{{.Id}}", ref)

    try:
        old_id = build_and_push("old")
        old_digest = _served_digest(ref)
        build_and_push("new")
        new_digest = _served_digest(ref)
        sh("tag", old_id, ref)  # the local tag points at the old image again
        assert old_digest != new_digest
        cmd = ["sh", "-c", "echo run >> /counter/n; cat /marker > /outputs/marker"]
        stale = copy_run(tracker, engine, image=ref, command=cmd, outputs=["./outputs/marker"])
        assert Path("outputs/marker").read_text().strip() == "old"  # without pull_latest: the local image
        fresh = copy_run(tracker, engine, image=ref, command=cmd, outputs=["./outputs/marker"], pull_latest=True)
        assert not fresh.cache_hit and executions() == 2
        assert Path("outputs/marker").read_text().strip() == "new"
        assert fresh.image_digest == new_digest != stale.image_digest
        assert tracker.explain(fresh.run_id)["changed"] == ["image_digest"]
    finally:
        subprocess.run([engine, "rmi", "-f", ref], capture_output=True, timeout=120)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_run_as_user_names_the_container_user(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    Path("outputs").mkdir()
    os.chmod("outputs", 0o777)
    cmd = ["sh", "-c", "id -u > /outputs/uid; id -g > /outputs/gid"]
    run_container(tracker, "u", image(engine), cmd, {"./outputs": "/outputs"}, [], ["./outputs/uid"],
                  backend_type=engine, run_as_user="4321:4322")  # fmt: skip
    assert Path("outputs/uid").read_text().strip() == "4321"
    assert Path("outputs/gid").read_text().strip() == "4322"
    assert Path("outputs/uid").stat().st_uid == 4321  # the restored copy is ours; the engine wrote as 4321
    with pytest.raises(consist.ConsistError, match="numeric user"):
        run_container(tracker, "bad", image(engine), cmd, {"./outputs": "/outputs"}, [], [], run_as_user="root; id")


RUN_AS_CALLER = """
import os, sys
from pathlib import Path
from consist import Tracker
from consist.integrations.containers import run_container
t = Tracker("runs", db_path="provenance.duckdb", project_root=".")
r = run_container(t, "as-caller", sys.argv[1], ["sh", "-c", "id -u > /outputs/uid"], {"./outputs": "/outputs"}, [],
                  ["./outputs/uid"], backend_type="docker")
print(os.getuid(), Path("outputs/uid").read_text().strip(), Path("outputs/uid").stat().st_uid)
t.close()
"""


def _runs_as(python: str, uid: int, gid: int) -> bool:
    try:
        return subprocess.run([python, "-c", "pass"], user=uid, group=gid, cwd="/", timeout=60).returncode == 0
    except OSError:
        return False


def test_non_root_caller_runs_containers_as_itself(tmp_path: Path) -> None:
    """run_as_user defaults to True for a non-root caller: outputs are not owned by root."""
    need("docker")
    import grp
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    import tempfile

    uid = gid = 65534
    # pytest's tmp_path lies under a directory only root may enter.
    work = Path(tempfile.mkdtemp(prefix="consist-nobody-"))
    (work / "outputs").mkdir(parents=True)
    for p in (work, work / "outputs"):
        os.chown(p, uid, gid)
    docker_gid = grp.getgrnam("docker").gr_gid
    # The virtualenv's interpreter may live in root's home; any Python 3.11 with our
    # site-packages on its path will do for the other user.
    python = next((exe for exe in (sys.executable, "/usr/bin/python3.11") if _runs_as(exe, uid, gid)), None)
    if python is None:
        pytest.fail("no Python interpreter that user 65534 may execute (install Debian's python3)")
    import site

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSIST_")}
    path = [str(Path(consist.__file__).parents[1]), *site.getsitepackages()]
    env.update(HOME=str(work), CONSIST_PROGRESS="0", PYTHONPATH=os.pathsep.join(path))
    try:
        proc = subprocess.run(
            [python, "-c", RUN_AS_CALLER, image("docker")],
            cwd=work, env=env, user=uid, group=gid, extra_groups=[docker_gid],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    caller, inside, owner = proc.stdout.split()
    assert caller == inside == owner == str(uid)


@pytest.mark.parametrize("engine", ENGINES)
def test_timeout_stops_the_container_and_records_a_failure(engine: str, tracker: Tracker) -> None:
    need(engine)
    setup_data()
    marker = f"timeout-{uuid.uuid4().hex}"  # other runs of this test may be sleeping at the same moment
    cmd = ["sh", "-c", f"echo run >> /counter/n; echo {marker}; sleep 300"]
    with pytest.raises(consist.ContainerTimeoutError, match="stopped after 3 s") as info:
        copy_run(tracker, engine, command=cmd, run_id="slow", timeout=3)
    assert isinstance(info.value, TimeoutError)
    run = tracker.get_run("slow")
    assert run.status == "failed" and "stopped after" in run.error
    if engine != "apptainer":  # a daemon's container outlives its client unless it is removed
        left = subprocess.run([engine, "ps", "-aq", "--filter", "name=consist-"], capture_output=True, text=True,
                              timeout=60).stdout.split()  # fmt: skip
        assert left == []
    else:
        assert not [line for _pid, line in _cmdlines() if marker in line]
    with pytest.raises(consist.ConsistError, match="positive"):
        copy_run(tracker, engine, command=cmd, timeout=0)


@pytest.mark.parametrize("engine", ["docker", "podman", "apptainer"])
def test_a_failed_run_leaves_a_command_that_runs_it_again_without_its_secrets(engine: str, tmp_path: Path) -> None:
    need(engine)
    out = tmp_path / "runs" / "out"
    out.mkdir(parents=True)
    secret = "s3cr3t$HOME`x`\\n"  # characters a shell or Apptainer would expand
    cmd = ["sh", "-c", 'printf "%s" "$API_TOKEN" > /out/seen.txt; exit 3']
    with Tracker(tmp_path / "runs", code_version="v1") as t:
        with pytest.raises(consist.ContainerExecutionError) as err:
            run_container(t, "fails", image(engine), cmd, {str(out): "/out"}, None, {"x": str(out / "x.txt")},
                          environment={"API_TOKEN": secret}, backend_type=engine)  # fmt: skip
    run_id = err.value.run_id
    script = tmp_path / "runs" / str(run_id) / "command.sh"
    text = script.read_text()
    assert "s3cr3t" not in text and "API_TOKEN" in text and os.access(script, os.X_OK)
    assert (out / "seen.txt").read_text() == secret
    (out / "seen.txt").unlink()
    missing = subprocess.run([str(script)], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert missing.returncode != 0 and "set API_TOKEN" in missing.stderr  # says what it needs
    again = subprocess.run([str(script)], capture_output=True, text=True, timeout=240,
                           env={"PATH": os.environ["PATH"], "API_TOKEN": secret})  # fmt: skip
    assert again.returncode == 3, again.stderr
    assert (out / "seen.txt").read_text() == secret  # the same command, the same mounts, the value by name


def test_a_quiet_long_container_run_shows_a_status_with_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    need("docker")
    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    out = tmp_path / "runs" / "out"
    out.mkdir(parents=True)
    cmd = ["sh", "-c", "echo step one of two; sleep 2.5; echo done > /out/x.txt"]
    with Tracker(tmp_path / "runs", code_version="v1") as t:
        run_container(t, "slow", image("docker"), cmd, {str(out): "/out"}, None, {"x": str(out / "x.txt")})
    err = capfd.readouterr().err
    assert "step one of two" in err and " 2 s " in err  # the last line and the elapsed time
    with Tracker(tmp_path / "runs2", code_version="v1") as t:
        run_container(t, "slow", image("docker"), cmd, {str(out): "/out"}, None, {"x": str(out / "x.txt")},
                      stream_logs=True)  # fmt: skip
    streamed = capfd.readouterr()
    assert "step one of two" in streamed.out + streamed.err and " 2 s " not in streamed.err
