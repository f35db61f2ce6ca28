"""The provider on a distributed Airflow: PostgreSQL metadata DB, CeleryExecutor on Redis, two
Celery workers, two triggerers, api-server, scheduler and dag-processor as separate processes
(scripts/distributed.py), and what a user sees of it in the UI, in a real Chromium.

1. Fail-over: the example DAGs are triggered through the REST API; the triggerer holding their
   wait triggers is SIGKILLed while the batches run; the other triggerer must take the triggers
   over, every run must succeed and no batch may be created twice.
2. UI: log in, watch a nightly_ticket_enrichment run with its wait task deferred, follow the
   extra link to the batch, trigger manual_batch through its Params form and watch it succeed.
   Screenshots go to tests/deployment/artifacts/<time>/.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from pathlib import Path

import pytest
from conftest import CHROMIUM, REQUIRED_MODULES, distributed, require, require_binary

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GROUPS = {
    "nightly_ticket_enrichment": "enrich",
    "document_summarisation": "summarise",
    "historical_backfill": "tag_reviews",
    "manual_batch": "batch",
}
STEPS = ("submit", "wait", "collect", "retry")


def log_events(path: Path) -> list[str]:
    """The ``event`` of each JSON line of an Airflow task or trigger log."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(str(json.loads(line).get("event", "")))
        except ValueError:
            events.append(line)
    return events


def task_row(page, task_id: str):
    """The row of ``task_id`` in the run page's task instance table."""
    return page.locator("table tr", has=page.get_by_role("link", name=task_id, exact=True))


def expand_task_groups(page) -> None:
    """Open the task groups in the grid (the button is disabled when they already are)."""
    button = page.get_by_test_id("expand-all-button").first
    button.wait_for()
    if button.is_enabled():
        button.click()


def task_log_dir(stack, dag_id: str, run_id: str, task_id: str) -> Path:
    return stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"


@pytest.mark.timeout(600)
def test_triggerer_failover_runs_every_dag_once(stack, artifacts_dir):
    report = distributed.run_failover(stack, log=print)
    (artifacts_dir / "failover-report.json").write_text(json.dumps(report.as_dict(), indent=1, default=str))
    print(json.dumps({"timings": report.timings, "memory_mb": report.memory_mb}, indent=1))

    # every run succeeded, with its four separate tasks
    assert set(report.runs.values()) == set(GROUPS)
    assert report.final_states == dict.fromkeys(report.runs, "success")
    for run_id, dag_id in report.runs.items():
        group = GROUPS[dag_id]
        assert report.task_states[run_id] == {f"{group}.{step}": "success" for step in STEPS}

    # the killed triggerer held triggers, it was killed mid-wait, and the survivor took them all
    assert report.triggers_moved, "the killed triggerer held no trigger"
    victim_job = stack.triggerer_jobs[report.killed]
    survivor_job = stack.triggerer_jobs[report.survivor]
    assert not stack.alive_triggerer(report.killed)
    assert stack.alive_triggerer(report.survivor)
    assert all(old == victim_job and new == survivor_job for old, new in report.triggers_moved.values())
    assert report.batch_status_at_kill
    assert all(s in ("validating", "in_progress", "finalizing") for s in report.batch_status_at_kill.values())

    # no batch created twice: one batch per chunk in the ledgers, and the emulator agrees
    assert report.chunks == len(GROUPS)  # each sample input fits one batch
    assert len(set(report.batch_ids)) == report.chunks
    assert sum(report.batches_created.values()) == report.chunks
    assert report.batches_created == {"openai": 2, "anthropic": 2}

    # every input row is accounted for in the manifests on S3
    manifests = {key.split("/")[1]: m for key, m in report.manifests.items()}
    assert set(manifests) == set(GROUPS)
    for dag_id, manifest in manifests.items():
        assert manifest["accounted"] is True, dag_id
        assert manifest["succeeded"] == manifest["inputs"] > 0, dag_id
        assert manifest["run_path"].startswith(stack.run_path), dag_id

    # what an operator reads in the task logs: the estimate at submit, the counts at collect
    for run_id, dag_id in report.runs.items():
        group = GROUPS[dag_id]
        submit = log_events(task_log_dir(stack, dag_id, run_id, f"{group}.submit") / "attempt=1.log")
        assert any(e.startswith("Cost estimate (batch prices)") for e in submit), dag_id
        assert any(re.match(r"Chunk 1/1: created batch \S+ \(\d+ requests", e) for e in submit), dag_id
        collect = log_events(task_log_dir(stack, dag_id, run_id, f"{group}.collect") / "attempt=1.log")
        assert any(re.match(r"Attempt 1 collected: \d+ succeeded, 0 unresolved", e) for e in collect), dag_id

    # the survivor's trigger logs show the taken-over waits progressing to the end
    for key in report.moved_tasks.values():
        dag_id, run_id, task_id = key.split("/", 2)
        survivor_log = (
            task_log_dir(stack, dag_id, run_id, task_id) / f"attempt=1.log.trigger.{survivor_job}.log"
        )
        assert survivor_log.exists(), f"no trigger log of the survivor for {key}"
        events = log_events(survivor_log)
        assert any(re.match(r"poll \d+: \d+/1 batches ended, \d+/\d+ requests done", e) for e in events), key
        assert any("Trigger fired event" in e for e in events), key


@pytest.mark.timeout(600)
def test_ui_shows_deferred_wait_batch_link_and_params_form(stack, artifacts_dir):
    require({"playwright": REQUIRED_MODULES["playwright"]})
    require_binary(CHROMIUM, "chromium")
    from playwright.sync_api import expect, sync_playwright

    shots: list[Path] = []

    def shot(page, name: str) -> None:
        path = artifacts_dir / f"{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        shots.append(path)

    dag_id = "nightly_ticket_enrichment"
    run_id = stack.trigger(dag_id, "2026-11-20T00:00:00Z")  # the tickets of 2026-11-19
    wait_task = "enrich.wait"
    stack.wait_for(
        lambda: stack.task_states(dag_id, run_id).get(wait_task) == "deferred",
        240,
        "the nightly run's wait task never got deferred",
        interval=1,
    )
    links = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{wait_task}/links")
    batch_url = links["extra_links"]["LLM Batch 1"]
    assert batch_url.startswith(f"{stack.emulator_url}/v1/batches/batch_")
    batch_id = batch_url.rsplit("/", 1)[1]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            # The link targets the emulator's batch object, which (like the provider's API) wants
            # a key: the browser sends one to the emulator only, as a console login would.
            context.route(
                f"{stack.emulator_url}/**",
                lambda route: route.continue_(
                    headers={**route.request.headers, "authorization": "Bearer sk-emulator-ui"}
                ),
            )
            page = context.new_page()
            page.set_default_timeout(30_000)

            # log in
            page.goto(stack.api_url + "/")
            page.fill("input[name=username]", distributed.ADMIN_USER)
            page.fill("input[name=password]", stack.password)
            shot(page, "login")
            page.click("button[type=submit]")
            page.wait_for_url(stack.api_url + "/")

            # the run: four separate tasks, the wait task deferred while its batch runs
            quoted = urllib.parse.quote(run_id, safe="")
            page.goto(f"{stack.api_url}/dags/{dag_id}/runs/{quoted}")
            expand_task_groups(page)
            table = page.locator("table")
            for step in STEPS:
                expect(table.get_by_role("link", name=f"enrich.{step}", exact=True)).to_be_visible()
            wait_row = table.locator("tr", has=page.get_by_role("link", name=wait_task, exact=True))
            expect(wait_row).to_contain_text("Deferred")
            expect(table.locator("tr", has=page.get_by_role("link", name="enrich.submit"))).to_contain_text(
                "Success"
            )
            shot(page, "run-wait-deferred")
            assert stack.batch_status("openai", batch_id) in ("validating", "in_progress", "finalizing")

            # the wait task: deferred, its trigger's progress lines in the log
            page.goto(f"{stack.api_url}/dags/{dag_id}/runs/{quoted}/tasks/{wait_task}")
            expect(page.locator("main, body").first).to_contain_text("Deferred")
            expect(page.get_by_text(re.compile(r"poll \d+: 0/1 batches ended")).first).to_be_visible(
                timeout=60_000
            )
            shot(page, "wait-task-deferred-log")

            # its extra link, followed to the batch
            page.goto(f"{stack.api_url}/dags/{dag_id}/runs/{quoted}/tasks/{wait_task}/details")
            link = page.get_by_role("link", name="LLM Batch 1")
            expect(link).to_have_attribute("href", batch_url)
            shot(page, "wait-task-extra-link")
            with page.expect_popup() as popup_info:
                link.click()
            batch_page = popup_info.value
            batch_page.wait_for_load_state()
            assert batch_page.url == batch_url
            batch = json.loads(batch_page.locator("pre").first.inner_text())
            assert batch["id"] == batch_id and batch["object"] == "batch"
            assert batch["metadata"]["pipeline"] == "ticket-enrichment"
            shot(batch_page, "batch-behind-the-link")
            batch_page.close()

            # the run goes on to success
            final = stack.wait_runs({run_id: dag_id}, timeout=300)
            assert final == {run_id: "success"}
            page.goto(f"{stack.api_url}/dags/{dag_id}/runs/{quoted}")
            expand_task_groups(page)
            for step in STEPS:
                expect(task_row(page, f"enrich.{step}")).to_contain_text("Success")
            shot(page, "run-success")

            # manual_batch through its Params form, with values of our own
            before = stack.emulator_stats()["batches_created"]["anthropic"]
            ui_run_id = f"ui_form_{secrets.token_hex(3)}"
            page.goto(f"{stack.api_url}/dags/manual_batch")
            page.get_by_role("button", name="Trigger Dag").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("Run Parameters")
            provider = dialog.get_by_role("combobox")
            provider.click()
            provider.fill("anthropic")
            provider.press("Enter")
            expect(dialog.locator("input[name=element_provider]")).to_have_value("anthropic")
            dialog.locator("input[name=element_model]").fill("claude-haiku-4-5")
            max_tokens = dialog.get_by_role("spinbutton").first
            # Not the fail-over run's 120: the same request would be served from the result cache.
            ui_max_tokens = 130 + secrets.randbelow(20)
            max_tokens.fill(str(ui_max_tokens))
            shot(page, "manual-batch-form")
            dialog.get_by_role("button", name=re.compile("Advanced Options")).click()
            dialog.locator("input[name=dagRunId]").fill(ui_run_id)
            shot(page, "manual-batch-form-run-id")
            dialog.get_by_test_id("trigger-dag-submit").click()
            expect(dialog).to_be_hidden()

            final = stack.wait_runs({ui_run_id: "manual_batch"}, timeout=300)
            assert final == {ui_run_id: "success"}
            conf = stack.api("GET", f"/dags/manual_batch/dagRuns/{ui_run_id}")["conf"]
            assert conf["provider"] == "anthropic"
            assert conf["model"] == "claude-haiku-4-5"
            assert int(conf["max_tokens"]) == ui_max_tokens
            assert stack.emulator_stats()["batches_created"]["anthropic"] == before + 1
            print(f"prompt template as submitted by the form: {conf['prompt']!r}")

            page.goto(f"{stack.api_url}/dags/manual_batch/runs/{ui_run_id}")
            expect(page.get_by_text("Success").first).to_be_visible()
            expand_task_groups(page)
            for step in STEPS:
                expect(task_row(page, f"batch.{step}")).to_contain_text("Success")
            shot(page, "manual-batch-success")
        except Exception:
            for i, open_page in enumerate(context.pages):
                open_page.screenshot(path=str(artifacts_dir / f"failure-{i}.png"))
            raise
        finally:
            browser.close()

    print("screenshots:\n" + "\n".join(str(p) for p in shots))
    assert all(p.stat().st_size > 10_000 for p in shots)
