"""``consist ui`` driven by a real headless Chromium (Debian's chromium, through Playwright)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import consist
from consist import Tracker
from engines import need
from study_steps import prepare, simulate

SHOTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts" / "ui"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    need("chromium")
    base = tmp_path_factory.mktemp("ui")
    runs = base / "runs"
    with Tracker(runs, project_root=base, code_version="v1") as t:
        for name, rate in (("baseline", 1.5), ("policy", 2.0)):
            with consist.scenario(name, t) as sc:
                sc.run(prepare, config={"zones": 4, "out": str(runs / "hh.csv")}, outputs=["households"])
                sc.run(simulate, inputs={"households": "households"},
                       config={"rate": rate, "out": str(runs / f"trips_{name}.csv")}, outputs=["trips"])  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "consist", "ui", "--db", str(runs / "provenance.duckdb"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert m, line
    url = f"http://127.0.0.1:{m.group(1)}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/", timeout=2)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    yield url, base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(server: tuple[str, Path]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def status(url: str, method: str = "GET") -> int:
    try:
        return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_runs_table_run_page_lineage_and_compare_in_a_browser(server: tuple[str, Path], browser: object) -> None:
    url, _base = server
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page.goto(url + "/")
    assert page.locator("#runs tbody tr").count() == 6 and page.locator("#total").inner_text() == "6 in all"
    shot(page, "runs")
    page.select_option("select[name=model]", "simulate")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*model=simulate.*"))
    assert page.locator("#runs tbody tr").count() == 2
    page.click("a.run-link >> nth=0")  # the newest: the policy scenario's simulate step
    page.wait_for_selector("#run-id")
    why = page.locator("#why").inner_text()
    assert "config changed" in why and "rate" in why and "1.5" in why and "2" in why
    assert page.locator("#config").inner_text().count("rate") == 1
    shot(page, "run")
    run_id = page.locator("#run-id").inner_text()

    page.click("text=lineage >> nth=0")
    page.wait_for_selector("body[data-graph-ready='1']")
    labels = page.evaluate("window.cy.nodes().map(n => n.data('label'))")
    assert {"trips", "households", run_id} <= set(labels)
    shot(page, "lineage")
    page.evaluate(f"window.cy.getElementById('run:{run_id}').emit('tap')")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}$"))

    page.goto(url + "/compare?a=baseline&b=policy")
    page.wait_for_selector("body[data-charts-ready='1']")
    text = page.locator("main").inner_text()
    assert "prepare" in text and "simulate" in text and "config changed" in text
    assert page.locator("table.outputs tr.changed", has_text="trips").count() == 1
    assert page.locator("canvas.chart").count() >= 1
    last_chart = "Chart.getChart([...document.querySelectorAll('canvas.chart')].pop())"
    assert page.evaluate(f"{last_chart}.data.datasets[0].data") == [0, 150, 300, 450]  # baseline trips
    assert page.evaluate(f"{last_chart}.data.datasets[1].data") == [
        0, 200, 400, 600,
    ]  # fmt: skip
    shot(page, "compare")

    page.goto(url + "/scenarios/policy")
    steps = page.locator("#steps").inner_text()
    assert "hit of" in steps and "executed (config changed)" in steps
    shot(page, "scenario")
    page.close()


def test_it_is_read_only_and_serves_only_recorded_files(server: tuple[str, Path]) -> None:
    url, base = server
    assert status(url + "/", "POST") == 405 and status(url + "/runs/baseline", "DELETE") == 405
    assert status(url + "/runs/no_such_run") == 404
    for attack in ("/files/..%2F..%2F..%2Fetc%2Fpasswd", "/files/%2Fetc%2Fpasswd", "/static/..%2F..%2F__init__.py",
                   "/static/../../../../etc/passwd", "/files/" + "a" * 32):  # fmt: skip
        assert status(url + attack) == 404, attack
    with Tracker(base / "runs", project_root=base, code_version="v1") as t:
        art = t.get_artifacts_for_run(t.find_runs(model="prepare")[-1].id).outputs["households"]
    body = urllib.request.urlopen(f"{url}/files/{art.id}", timeout=10).read()
    assert body.decode().startswith("zone,households")
    # A link put where the recorded file was is not followed.
    target = Path(art.uri)
    saved = target.read_bytes()
    target.unlink()
    os.symlink("/etc/passwd", target)
    try:
        assert status(f"{url}/files/{art.id}") == 404
    finally:
        target.unlink()
        target.write_bytes(saved)


def test_the_runs_table_pages_on_the_server_with_100000_runs(tmp_path: Path) -> None:
    """100,000 runs: a page still holds only its rows, and answers quickly."""
    need("chromium")
    from consist.store.columns import RUN_COLUMNS
    from consist.store.sqlite import SQLiteIndex, index_path_for

    db = tmp_path / "provenance.duckdb"
    ix = SQLiteIndex(index_path_for(db))
    cols = [*RUN_COLUMNS, "seq"]
    now = time.time()
    rows = [[f"r{i:06d}", f"r{i}", f"m{i % 7}", "completed", None, None, None, None, "s", None, None, None,
             None, None, i % 2, None, 1, None, None, None, 1, "h", now - i, now - i + 1, 1]
            for i in range(100_000)]  # fmt: skip
    ix.atomic(lambda: ix._run_many(f"INSERT INTO run ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows))
    ix.close()
    proc = subprocess.Popen([sys.executable, "-m", "consist", "ui", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        url = re.search(r"http://[\d.]+:\d+", proc.stderr.readline()).group(0)  # type: ignore[union-attr]
        time.sleep(0.5)
        started = time.monotonic()
        html = urllib.request.urlopen(url + "/?model=m3&sort=started_at&dir=asc&page=40&size=100", timeout=30).read()
        elapsed = time.monotonic() - started
        assert html.count(b'class="run-link"') == 100 and b"14286 in all" in html
        assert elapsed < 30  # a bound against hanging, not a speed target (see BENCHMARKS.md)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
