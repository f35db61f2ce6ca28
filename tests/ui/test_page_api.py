"""The page's API on a real API server: login required, per-DAG access, filters, paging, charts
and CSV, and the plugin registered through the entry point."""

from __future__ import annotations

import csv
import io

import httpx
from ui_server import API_KEY, KNOWN, ApiServer


def test_plugin_is_loaded_and_in_the_navigation(api_server: ApiServer) -> None:
    plugins = api_server.get("/api/v2/plugins", "admin").json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "llm_batch")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/llm-batches"
    view = ours["external_views"][0]
    assert (view["name"], view["url_route"], view["href"]) == ("LLM batches", "llm-batches", "/llm-batches/")


def test_requests_without_login_are_refused(api_server: ApiServer) -> None:
    for path in ("/llm-batches/", "/llm-batches/api/runs", "/llm-batches/api/runs.csv"):
        assert api_server.get(path).status_code == 401, path
    bad = httpx.get(f"{api_server.url}/llm-batches/api/runs", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code in (401, 403)


def test_a_user_sees_only_runs_of_dags_they_may_read(api_server: ApiServer) -> None:
    admin = api_server.get("/llm-batches/api/runs", "admin", page_size=500).json()
    scoped = api_server.get("/llm-batches/api/runs", "scoped", page_size=500).json()
    assert {r["dag_id"] for r in admin["rows"]} == {"ui_dag_a", "ui_dag_b"}
    assert admin["total"] == 65
    assert {r["dag_id"] for r in scoped["rows"]} == {"ui_dag_a"} and scoped["total"] == 5
    assert scoped["facets"]["dag_id"] == ["ui_dag_a"]
    assert "research" not in scoped["facets"]["cost_centre"], "facets leak nothing of hidden DAGs"
    hidden = api_server.get("/llm-batches/api/runs", "scoped", dag_id="ui_dag_b").json()
    assert hidden["total"] == 0 and hidden["rows"] == []
    text = api_server.get("/llm-batches/api/runs.csv", "scoped").text
    assert "ui_dag_b" not in text and "research" not in text


def test_known_run_figures_equal_its_manifest(api_server: ApiServer) -> None:
    m = api_server.known_manifest
    data = api_server.get(
        "/llm-batches/api/runs", "admin", dag_id=KNOWN["dag_id"], cost_centre="support"
    ).json()
    assert data["total"] == 1
    row = data["rows"][0]
    assert (row["run_id"], row["group"], row["provider"]) == (KNOWN["run_id"], KNOWN["group"], "openai")
    assert (row["rows"], row["succeeded"], row["errored"], row["rejected"]) == (
        m["inputs"], m["succeeded"], m["unresolved"], m["rejected"]
    ) == (7, 5, 1, 1)
    assert row["batch_usd"] == m["cost"]["batch_usd"] and row["standard_usd"] == m["cost"]["standard_usd"]
    assert row["console_urls"] == [f"https://platform.openai.com/batches/{m['batches'][0]['batch_id']}"]
    assert data["totals"]["savings_usd"] == round(m["cost"]["savings_usd"], 6)


def test_filters_paging_charts_and_csv(api_server: ApiServer) -> None:
    first = api_server.get("/llm-batches/api/runs", "admin", provider="anthropic").json()
    assert first["total"] == 60 and len(first["rows"]) == 50
    second = api_server.get("/llm-batches/api/runs", "admin", provider="anthropic", page=2).json()
    assert len(second["rows"]) == 10
    assert not {r["run_id"] for r in first["rows"]} & {r["run_id"] for r in second["rows"]}
    days = api_server.get(
        "/llm-batches/api/runs", "admin", date_from="2026-11-02", date_to="2026-11-03", page_size=500
    ).json()
    assert {r["completed_at"][:10] for r in days["rows"]} == {"2026-11-02", "2026-11-03"}
    assert days["total"] == 6
    charts = days["charts"]
    assert charts["daily"]["days"] == ["2026-11-02", "2026-11-03"]
    assert charts["savings_by_cost_centre"]["labels"] == ["research"]
    assert list(charts["completion_minutes"]) == ["anthropic · claude-haiku-4-5"]
    model = api_server.get("/llm-batches/api/runs", "admin", model="gpt-6-luna").json()
    assert model["total"] == 5
    response = api_server.get("/llm-batches/api/runs.csv", "admin", provider="anthropic")
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 60 and {r["provider"] for r in rows} == {"anthropic"}


def test_no_response_or_index_file_holds_the_provider_key(api_server: ApiServer) -> None:
    bodies = [
        api_server.get("/llm-batches/api/runs", "admin", page_size=500).text,
        api_server.get("/llm-batches/api/runs.csv", "admin").text,
        api_server.get("/llm-batches/", "admin").text,
    ]
    bodies += [p.read_text() for p in (api_server.run_path / "_index").rglob("*.json")]
    assert KNOWN["run_id"] in bodies[0]
    assert not any(API_KEY in body for body in bodies)
