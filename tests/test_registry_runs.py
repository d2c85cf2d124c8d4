"""Container runs from registry references on the loopback registries with authentication.

Apptainer runs ``docker://127.0.0.1:PORT/...`` (plain HTTP: ``APPTAINER_NOHTTPS=1``);
Docker and Podman run tags with ``pull_latest=True``. Both registries (token and
htpasswd) must give a run that executes once and then hits, keyed on the digest
the registry serves; a sweep asks the registry once; a node that cannot reach the
registry runs from Apptainer's cache on the recorded digest, or fails before
starting when no digest is known.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.containers import registry
from engines import facts, need
from test_containers import copy_run, executions, setup_data
from test_registry import fact, isolate, login, token_log_size, tokens_since

ENGINES = ["apptainer", "docker", "podman"]
REGISTRIES = {
    "token": ("CI_REGISTRY_TOKEN", "private/busybox", "CI_TOKEN_PRIVATE_BUSYBOX_DIGEST"),
    "basic": ("CI_REGISTRY_BASIC", "ci/busybox", "CI_BASIC_BUSYBOX_DIGEST"),
}


def image_for(engine: str, ref: str) -> dict[str, object]:
    """run_container arguments for a registry reference on ``engine``."""
    if engine == "apptainer":
        return {"image": f"docker://{ref}"}
    return {"image": ref, "pull_latest": True}


def forget_local(engine: str, ref: str, digest: str) -> None:
    """Remove the engine's copy so the run must pull (by digest, with the login)."""
    if engine == "apptainer":
        return  # each test has its own Apptainer cache
    repo = ref.rsplit(":", 1)[0]
    subprocess.run([engine, "rmi", "-f", ref, f"{repo}@{digest}"], capture_output=True, timeout=120)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """As in test_registry: only the logins a test writes, its own digest record."""
    yield isolate(tmp_path, monkeypatch)
    registry.clear_cache()


@pytest.fixture(autouse=True)
def own_apptainer_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh Apptainer cache: the first docker:// run must really pull, with the login."""
    cache = tmp_path / "apptainer-cache"
    cache.mkdir()
    monkeypatch.setenv("APPTAINER_CACHEDIR", str(cache))
    return cache


def access_log_since(path: str, offset: int, repo: str) -> list[tuple[str, int, str, str]]:
    """(method, status, user agent, tag or digest) of the manifest requests the registry logged after ``offset``."""
    time.sleep(0.3)  # the registry writes its access log line after answering
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    pat = re.compile(rf'"(HEAD|GET) /v2/{re.escape(repo)}/manifests/(\S+) HTTP/[\d.]+" (\d{{3}}) \S+ "[^"]*" "([^"]*)"')
    return [(m.group(1), int(m.group(3)), m.group(4), m.group(2)) for m in pat.finditer(text)]


def size(path: str) -> int:
    return Path(path).stat().st_size


@pytest.mark.parametrize("kind", ["token", "basic"])
@pytest.mark.parametrize("engine", ENGINES)
def test_private_image_runs_then_hits_on_its_registry_digest(engine: str, kind: str, tracker: Tracker,
                                                             isolated: Path) -> None:  # fmt: skip
    need(engine)
    host_key, repo, digest_key = REGISTRIES[kind]
    ref, digest = f"{fact(host_key)}/{repo}:test", fact(digest_key)
    login(isolated, fact("CI_REGISTRY_PASSWORD"))
    forget_local(engine, ref, digest)
    setup_data()
    first = copy_run(tracker, engine, **image_for(engine, ref))
    assert not first.cache_hit and executions() == 1 and first.image_digest == digest
    assert Path("outputs/result.csv").read_text() == "x,y\n1,2\n"
    registry.clear_cache()  # a new process: asks the registry again, same digest, a hit
    second = copy_run(tracker, engine, **image_for(engine, ref))
    assert second.cache_hit and second.cache_source == first.run_id and executions() == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_anonymous_public_image_runs_from_the_token_registry(engine: str, tracker: Tracker) -> None:
    need(engine)
    ref, digest = f"{fact('CI_REGISTRY_TOKEN')}/public/busybox:test", fact("CI_TOKEN_PUBLIC_BUSYBOX_DIGEST")
    forget_local(engine, ref, digest)
    setup_data()
    first = copy_run(tracker, engine, **image_for(engine, ref))
    assert not first.cache_hit and first.image_digest == digest
    assert copy_run(tracker, engine, **image_for(engine, ref)).cache_hit and executions() == 1


def test_multi_arch_index_runs_on_apptainer_keyed_on_the_index(tracker: Tracker) -> None:
    need("apptainer")
    setup_data()
    r = copy_run(tracker, "apptainer", image=f"docker://{fact('CI_REGISTRY_TOKEN')}/public/multi:test")
    assert r.image_digest == fact("CI_TOKEN_MULTI_DIGEST") and executions() == 1
    registry.clear_cache()
    pinned = f"docker://{fact('CI_REGISTRY_TOKEN')}/public/multi@{fact('CI_TOKEN_MULTI_DIGEST')}"
    assert copy_run(tracker, "apptainer", image=pinned).cache_hit  # the tag and its pinned index are one key


def test_no_file_written_holds_the_password(tracker: Tracker, isolated: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Credentialed runs on every engine, then every file under the test's directory (database,
    run folders, logs, the digest record, Apptainer's cache) is searched for the password."""
    caplog.set_level(logging.DEBUG)
    password = fact("CI_REGISTRY_PASSWORD")
    config = login(isolated, password)
    setup_data()
    ref = f"{fact('CI_REGISTRY_BASIC')}/ci/busybox:test"
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for engine in ENGINES:
            need(engine)
            forget_local(engine, ref, fact("CI_BASIC_BUSYBOX_DIGEST"))
            r = copy_run(tracker, engine, run_id=f"secret-{engine}", **image_for(engine, ref))
            assert r.image_digest == fact("CI_BASIC_BUSYBOX_DIGEST")
        login(isolated, f"{password}-wrong")  # a refused login must not leak either
        registry.clear_cache()
        for engine in ENGINES:
            with pytest.raises(consist.ConsistError) as err:
                copy_run(tracker, engine, run_id=f"refused-{engine}",
                         **image_for(engine, f"{fact('CI_REGISTRY_TOKEN')}/private/busybox:test"))  # fmt: skip
            caught.append(str(err.value))
    user = fact("CI_REGISTRY_USER")
    secrets = [password.encode()]
    for pw in (password, f"{password}-wrong"):
        secrets.append(base64.b64encode(f"{user}:{pw}".encode()))
    leaks = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != config:
            data = path.read_bytes()
            leaks += [f"{path}: {s.decode()[:6]}…" for s in secrets if s in data]
    assert leaks == [], leaks
    texts = [*caught, caplog.text, *(str(w.message) for w in seen)]
    assert not [t for t in texts if any(s.decode() in t for s in secrets)]
    assert not (isolated / "apptainer" / "docker-config.json").exists()  # nothing was logged in for the user


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sweep_asks_the_registry_once(engine: str, tracker: Tracker, tmp_path: Path) -> None:
    """50 container steps on one tag: one token and one answered manifest request at the
    registry; with the reference pinned by digest, none."""
    need(engine)
    repo = "public/busybox"
    ref, digest = f"{fact('CI_REGISTRY_TOKEN')}/{repo}:test", fact("CI_TOKEN_PUBLIC_BUSYBOX_DIGEST")
    access_log = fact("CI_REGISTRY_TOKEN_ACCESS_LOG")
    setup_data()
    copy_run(tracker, engine, run_id="warm", **image_for(engine, ref))  # the engine has the image now
    registry.clear_cache()  # a new process starts the sweep

    def sweep(image: dict[str, object], n: int, tag: str) -> None:
        for i in range(n):
            setup_data(text=f"x,y\n{i % 5},{tag}\n")  # five different inputs: some steps run, most hit
            copy_run(tracker, engine, run_id=f"{tag}-{i}", **image)

    start_tokens, start_log = token_log_size(), size(access_log)
    sweep(image_for(engine, ref), 50, "tag")
    asked = access_log_since(access_log, start_log, repo)
    issued = [t for t in tokens_since(start_tokens) if t["status"] == 200]
    # One round trip: the tag answered once (Docker's daemon then also reads the manifest by digest).
    assert len([r for r in asked if r[1] == 200 and r[3] == "test"]) == 1, asked
    assert len(asked) <= 3, asked
    assert len(issued) == 1, issued

    start_tokens, start_log = token_log_size(), size(access_log)
    pinned = f"{ref.rsplit(':', 1)[0]}@{digest}"
    sweep({"image": f"docker://{pinned}"} if engine == "apptainer" else {"image": pinned}, 10, "pinned")
    assert access_log_since(access_log, start_log, repo) == []
    assert tokens_since(start_tokens) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A registry this test can stop: plain HTTP on a free loopback port, busybox pushed with skopeo."""
    port = _free_port()
    d = tmp_path / "own-registry"
    (d / "data").mkdir(parents=True)
    (d / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        for _ in range(80):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the test's own registry did not start")
        addr = f"127.0.0.1:{port}"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                        f"docker-archive:{fact('CI_DOCKER_ARCHIVE_BUSYBOX')}", f"docker://{addr}/off/busybox:test"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        yield addr, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_offline_node_runs_from_apptainer_cache_on_the_recorded_digest(  # type: ignore[no-untyped-def]
    tracker: Tracker, own_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("apptainer")
    addr, proc = own_registry
    image = f"docker://{addr}/off/busybox:test"
    setup_data()
    online = copy_run(tracker, "apptainer", image=image)
    assert not online.cache_hit and online.image_digest.startswith("sha256:")
    assert registry.recorded(image).digest == online.image_digest  # type: ignore[union-attr]

    proc.kill()  # the node goes offline
    proc.wait(timeout=30)
    registry.clear_cache()
    setup_data(text="x,y\n3,4\n")
    with pytest.warns(consist.ConsistWarning, match="cannot be reached.*recorded"):
        offline = copy_run(tracker, "apptainer", run_id="offline", image=image)
    assert not offline.cache_hit and executions() == 2 and offline.image_digest == online.image_digest
    assert Path("outputs/result.csv").read_text() == "x,y\n3,4\n"
    with pytest.warns(consist.ConsistWarning):
        again = copy_run(tracker, "apptainer", run_id="offline-again", image=image)
    assert again.cache_hit and again.cache_source == offline.run_id

    runs_before = len(tracker.find_runs())
    with pytest.raises(consist.ImageNotFoundError) as err:  # never resolved here: no digest to key on
        copy_run(tracker, "apptainer", run_id="unknown", image=f"docker://{addr}/off/other:test")
    text = str(err.value)
    assert "@sha256:" in text and ".sif" in text and "no digest was ever recorded" in text

    empty = tmp_path / "empty-apptainer-cache"
    empty.mkdir()
    monkeypatch.setenv("APPTAINER_CACHEDIR", str(empty))  # recorded, but the image is not here
    with pytest.raises(consist.ImageNotFoundError, match="not in Apptainer's cache"):
        copy_run(tracker, "apptainer", run_id="not-cached", image=image)
    assert len(tracker.find_runs()) == runs_before and executions() == 2


def test_the_pinned_docker_reference_runs_the_cached_sif_without_the_registry(  # type: ignore[no-untyped-def]
    tracker: Tracker, own_registry
) -> None:
    """Executing a step from a digest Apptainer already has does not contact the registry."""
    need("apptainer")
    addr, proc = own_registry
    setup_data()
    first = copy_run(tracker, "apptainer", image=f"docker://{addr}/off/busybox:test")
    proc.kill()
    proc.wait(timeout=30)
    setup_data(text=f"x,y\n{uuid.uuid4().hex},0\n")
    pinned = f"docker://{addr}/off/busybox@{first.image_digest}"
    r = copy_run(tracker, "apptainer", run_id="pinned", image=pinned)  # would fail if Apptainer had to ask
    assert not r.cache_hit and executions() == 2 and r.image_digest == first.image_digest


def test_facts_for_the_auth_registries_are_there() -> None:
    for key in ("CI_REGISTRY_TOKEN", "CI_TOKEN_SERVICE", "CI_REGISTRY_BASIC", "CI_REGISTRY_PASSWORD",
                "CI_TOKEN_SERVICE_LOG", "CI_REGISTRY_TOKEN_ACCESS_LOG", "CI_SKOPEO"):  # fmt: skip
        assert facts().get(key), f"{key} missing: run scripts/setup-containers.sh"


def test_apptainer_pull_gets_the_login_through_its_environment_only(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Apptainer must pull, the login consist found reaches it as APPTAINER_DOCKER_USERNAME/_PASSWORD
    in the engine's environment: not on the command line, not in a file; a login the caller set wins."""
    need("apptainer")
    from consist.containers import ContainerSpec, ImageRef, get_backend

    password = fact("CI_REGISTRY_PASSWORD")
    login(isolated, password)
    run_ref = f"docker://{fact('CI_REGISTRY_BASIC')}/ci/busybox@{fact('CI_BASIC_BUSYBOX_DIGEST')}"
    spec = ContainerSpec(ImageRef(run_ref, fact("CI_BASIC_BUSYBOX_DIGEST"), run_ref, "registry"), ("true",), (), {})
    launch = get_backend("apptainer").launch(spec)
    launch.close()
    assert launch.env["APPTAINER_DOCKER_USERNAME"] == fact("CI_REGISTRY_USER")
    assert launch.env["APPTAINER_DOCKER_PASSWORD"] == password
    assert not [a for a in launch.argv if password in a] and launch.pass_fds == ()
    monkeypatch.setenv("APPTAINER_DOCKER_USERNAME", "someone-else")
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", "their-own")
    launch = get_backend("apptainer").launch(spec)
    launch.close()
    assert launch.env["APPTAINER_DOCKER_PASSWORD"] == "their-own"
    sif_spec = ContainerSpec(ImageRef("x.sif", "sha256:" + "1" * 64, "/x.sif", "sif-file"), ("true",), (), {})
    monkeypatch.delenv("APPTAINER_DOCKER_USERNAME")
    monkeypatch.delenv("APPTAINER_DOCKER_PASSWORD")
    launch = get_backend("apptainer").launch(sif_spec)
    launch.close()
    assert "APPTAINER_DOCKER_PASSWORD" not in launch.env  # nothing to pull: no login handed over
