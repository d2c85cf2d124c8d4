"""A container that writes symbolic links into its outputs gets no host file into the store.

The links point at files the container could never read: /etc/passwd of the
host (inside the container the path names the image's own file) and a host
file that was not mounted. The host stores and restores the links as links.
Real Docker, Podman and Apptainer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from consist import Tracker
from consist.integrations.containers import run_container
from engines import image, need

ENGINES = ["docker", "podman", "apptainer"]
SECRET = b"host-only secret 51d0e2: never mounted, never stored\n"


def executions() -> int:
    f = Path("counter/n")
    return len(f.read_text().splitlines()) if f.exists() else 0


def links_run(tracker: Tracker, engine: str, secret: Path):
    script = (
        "echo run >> /counter/n; mkdir -p /outputs/dir; echo data > /outputs/dir/data.csv; "
        f"ln -s /etc/passwd /outputs/dir/passwd; ln -s {secret} /outputs/dir/key; ln -s data.csv /outputs/dir/alias"
    )
    return run_container(
        tracker,
        "links",
        image(engine),
        ["sh", "-c", script],
        {"./outputs": "/outputs", "./counter": "/counter"},
        [],
        ["./outputs/dir"],
        backend_type=engine,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_links_a_container_writes_are_stored_as_links(
    engine: str, tracker: Tracker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    need(engine)
    secret = tmp_path_factory.mktemp("host-only") / "id_rsa"
    secret.write_bytes(SECRET)
    Path("outputs").mkdir()
    Path("counter").mkdir()

    first = links_run(tracker, engine, secret)
    assert not first.cache_hit and executions() == 1
    art = first.artifacts["dir"]
    entries = {e[0]: e for e in tracker._objects.read_manifest(art.hash)}
    assert sorted(entries) == ["alias", "data.csv", "key", "passwd"]
    assert entries["passwd"][3:] == [{"symlink": "/etc/passwd"}]
    assert entries["key"][3:] == [{"symlink": str(secret)}]
    assert entries["alias"][3:] == [{"symlink": "data.csv"}]
    assert len(entries["data.csv"]) == 3 and art.size == len(b"data\n")
    root = tracker._objects.root / "sha256"
    stored = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert not any(SECRET in b for b in stored), "a host file the container could not see reached the store"
    assert Path("/etc/passwd").read_bytes() not in stored

    shutil.rmtree("outputs/dir")
    hit = links_run(tracker, engine, secret)
    assert hit.cache_hit and executions() == 1
    d = Path("outputs/dir")
    assert os.readlink(d / "passwd") == "/etc/passwd" and os.readlink(d / "key") == str(secret)
    assert os.readlink(d / "alias") == "data.csv" and (d / "data.csv").read_text() == "data\n"
    assert not (d / "data.csv").is_symlink() and secret.read_bytes() == SECRET


@pytest.mark.parametrize("engine", ENGINES)
def test_an_output_that_is_a_link_hits_while_the_link_is_in_place(engine: str, tracker: Tracker) -> None:
    """The declared output itself is a symlink (to /etc/passwd of the image): recorded as the link."""
    need(engine)
    Path("outputs").mkdir()
    Path("counter").mkdir()
    cmd = ["sh", "-c", "echo run >> /counter/n; ln -sf /etc/passwd /outputs/result.csv"]

    def run():
        return run_container(
            tracker, "link-out", image(engine), cmd, {"./outputs": "/outputs", "./counter": "/counter"}, [],
            ["./outputs/result.csv"], backend_type=engine,
        )  # fmt: skip

    first = run()
    assert not first.cache_hit and os.readlink("outputs/result.csv") == "/etc/passwd"
    second = run()  # the link is still there: a hit, not a refusal
    assert second.cache_hit and executions() == 1
    os.unlink("outputs/result.csv")
    third = run()
    assert third.cache_hit and os.readlink("outputs/result.csv") == "/etc/passwd" and executions() == 1
