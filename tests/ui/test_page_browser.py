"""The "LLM batches" page in chromium (Playwright): log in, open it from Airflow's navigation,
filter, read a known run's figures against its manifest, download the CSV; a user who may not
read a DAG does not see its runs. Screenshots go to a tmp dir printed at the start."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from ui_server import KNOWN, PASSWORDS, ApiServer

CHROMIUM = os.environ.get("BP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run scripts/system-deps.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llm-batches-screenshots")
    print(f"\nscreenshots: {path}")
    return path


def _login(browser, server: ApiServer, user: str):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    return context, page


def _open_page(page, server: ApiServer):
    """Open the page from Airflow's navigation; return the frame it is shown in, once loaded."""
    nav = page.get_by_role("link", name="LLM batches").or_(page.get_by_role("button", name="LLM batches"))
    nav.first.click()
    page.wait_for_url(server.url + "/plugin/llm-batches")
    frame = page.frame_locator("iframe").first
    frame.locator("body[data-loaded]").wait_for()
    return frame


def usd(value: float) -> str:
    """The page's dollar format: 2 decimals from $1, 4 from $0.01, else 6."""
    a = abs(value)
    return f"${value:.{2 if a == 0 or a >= 1 else 4 if a >= 0.01 else 6}f}"


def _cells(row) -> list[str]:
    return [c.strip() for c in row.locator("td").all_inner_texts()]


def test_known_run_figures_filters_and_csv(api_server: ApiServer, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    m = api_server.known_manifest
    context, page = _login(browser, api_server, "admin")
    try:
        frame = _open_page(page, api_server)
        expect(frame.locator("#page-info")).to_contain_text("Page 1 of 2 · 65 runs")
        expect(frame.locator("#runs tbody tr")).to_have_count(50)
        page.screenshot(path=str(shots / "01-all-runs.png"), full_page=True)

        frame.locator("select[name=dag_id]").select_option(KNOWN["dag_id"])
        expect(frame.locator("#page-info")).to_contain_text("5 runs")
        frame.locator("select[name=cost_centre]").select_option("support")
        expect(frame.locator("#page-info")).to_contain_text("Page 1 of 1 · 1 runs")
        row = frame.locator("#runs tbody tr").first
        expect(row).to_have_attribute("data-run-id", KNOWN["run_id"])
        cells = _cells(row)
        assert cells[:5] == [KNOWN["dag_id"], KNOWN["run_id"], KNOWN["group"], "openai", "gpt-6-luna"]
        counts = ("inputs", "succeeded", "unresolved", "rejected", "dead_letter")
        assert cells[5:10] == [str(m[k]) for k in counts]
        assert cells[10:13] == [usd(m["cost"][k]) for k in ("batch_usd", "standard_usd", "savings_usd")]
        run_link = row.get_by_role("link", name="DAG run")
        assert run_link.get_attribute("href") == f"/dags/{KNOWN['dag_id']}/runs/{KNOWN['run_id']}"
        console = row.get_by_role("link", name="Batch 1").get_attribute("href")
        assert console == f"https://platform.openai.com/batches/{m['batches'][0]['batch_id']}"
        for chart in ("chart-daily", "chart-centre", "chart-model", "chart-completion"):
            box = frame.locator(f"#{chart}").bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, chart
        page.screenshot(path=str(shots / "02-known-run.png"), full_page=True)

        with page.expect_download() as download:
            frame.get_by_role("link", name="Export CSV").click()
        target = shots / "llm-batches.csv"
        download.value.save_as(target)
        rows = list(csv.DictReader(target.open()))
        assert len(rows) == 1
        assert (rows[0]["dag_id"], rows[0]["run_id"], rows[0]["rows"]) == (
            KNOWN["dag_id"], KNOWN["run_id"], str(m["inputs"])
        )
        assert float(rows[0]["batch_usd"]) == m["cost"]["batch_usd"]
    finally:
        context.close()


def test_page_hides_runs_of_dags_the_user_may_not_read(api_server: ApiServer, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    context, page = _login(browser, api_server, "scoped")
    try:
        frame = _open_page(page, api_server)
        expect(frame.locator("#page-info")).to_contain_text("Page 1 of 1 · 5 runs")
        dags = set(frame.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.dagId)"))
        assert dags == {KNOWN["dag_id"]}
        options = frame.locator("select[name=dag_id] option").all_inner_texts()
        assert "ui_dag_b" not in options
        page.screenshot(path=str(shots / "03-scoped-user.png"), full_page=True)
    finally:
        context.close()
