// The "LLM batches" page: reads /llm-batches/api/runs (same origin, Airflow's session cookie) and
// draws the table and the charts with Chart.js. Data is inserted as text, never as HTML.
"use strict";

const PAGE_SIZE = 50;
const FILTERS = ["dag_id", "provider", "model", "cost_centre", "date_from", "date_to"];
const form = document.getElementById("filters");
const charts = {};
let page = 1;
// Airflow's own pages live next to this app's prefix (``<base>/llm-batches/``).
const airflowBase = location.pathname.replace(/llm-batches\/.*$/, "");

// Dollars with enough decimals to show small runs: 2 from $1, 4 from $0.01, else 6.
function usd(v) {
  const n = Number(v || 0);
  const a = Math.abs(n);
  return "$" + n.toFixed(a === 0 || a >= 1 ? 2 : a >= 0.01 ? 4 : 6);
}
const money = { ticks: { callback: (v) => usd(v) } };
const minutes = (s) => (s == null ? "" : s < 3600 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(2) + " h");

function query(extra) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value;
    if (value) params.set(name, value);
  }
  for (const [k, v] of Object.entries(extra || {})) params.set(k, v);
  return params.toString();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function link(td, href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  a.target = "_top";
  a.rel = "noopener";
  td.appendChild(a);
  td.appendChild(document.createTextNode(" "));
}

function fillSelect(name, values) {
  const select = form.elements[name];
  const current = select.value;
  select.length = 1;
  for (const v of values || []) select.add(new Option(v, v));
  select.value = current;
}

function renderTable(data) {
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  for (const r of data.rows) {
    const tr = document.createElement("tr");
    tr.dataset.dagId = r.dag_id;
    tr.dataset.runId = r.run_id;
    cell(tr, r.dag_id);
    cell(tr, r.run_id);
    cell(tr, r.map_index >= 0 ? `${r.group} [${r.map_index}]` : r.group);  // mapped: one folder per index
    cell(tr, r.provider);
    cell(tr, (r.models || []).join(", "));
    cell(tr, r.rows, "n");
    cell(tr, r.succeeded, "n");
    cell(tr, r.errored, "n");
    cell(tr, r.rejected, "n");
    cell(tr, r.dead_letter, "n");
    cell(tr, usd(r.batch_usd), "n");
    cell(tr, usd(r.standard_usd), "n");
    cell(tr, usd(r.savings_usd), "n");
    cell(tr, minutes(r.completion_s), "n");
    cell(tr, (r.completed_at || "").replace("T", " ").slice(0, 19));
    const links = cell(tr, "");
    const runUrl = `${airflowBase}dags/${encodeURIComponent(r.dag_id)}/runs/${encodeURIComponent(r.run_id)}`;
    link(links, runUrl, "DAG run");
    (r.console_urls || []).forEach((u, i) => link(links, u, `Batch ${i + 1}`));
    body.appendChild(tr);
  }
  const pages = Math.max(1, Math.ceil(data.total / data.page_size));
  document.getElementById("page-info").textContent = `Page ${data.page} of ${pages} · ${data.total} runs`;
  document.getElementById("prev").disabled = data.page <= 1;
  document.getElementById("next").disabled = data.page >= pages;
  const t = data.totals;
  const totals = document.getElementById("totals");
  totals.replaceChildren();
  for (const [label, value] of [
    ["Runs", t.runs], ["Rows", t.rows], ["Spend", usd(t.batch_usd)],
    ["Synchronous", usd(t.standard_usd)], ["Saved", usd(t.savings_usd)],
  ]) {
    const b = document.createElement("b");
    b.textContent = value;
    totals.append(`${label}: `, b, "  ");
  }
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options);
  charts[id] = new Chart(document.getElementById(id), config);
}

function renderCharts(c) {
  draw("chart-daily", {
    type: "line",
    data: {
      labels: c.daily.days,
      datasets: [
        { label: "Batch spend", data: c.daily.batch_usd, borderColor: "#017cee", backgroundColor: "#017cee" },
        { label: "Synchronous equivalent", data: c.daily.standard_usd, borderColor: "#e53e3e", backgroundColor: "#e53e3e" },
      ],
    },
    options: { scales: { y: money } },
  });
  draw("chart-centre", {
    type: "bar",
    data: { labels: c.savings_by_cost_centre.labels, datasets: [{ label: "Savings", data: c.savings_by_cost_centre.values, backgroundColor: "#38a169" }] },
    options: { scales: { y: money }, plugins: { legend: { display: false } } },
  });
  draw("chart-model", {
    type: "bar",
    data: { labels: c.savings_by_model.labels, datasets: [{ label: "Savings", data: c.savings_by_model.values, backgroundColor: "#805ad5" }] },
    options: { indexAxis: "y", scales: { x: money }, plugins: { legend: { display: false } } },
  });
  const keys = Object.keys(c.completion_minutes);
  const series = (k) => keys.map((key) => c.completion_minutes[key][k]);
  draw("chart-completion", {
    type: "bar",
    data: {
      labels: keys,
      datasets: [
        { label: "median", data: series("p50"), backgroundColor: "#3182ce" },
        { label: "p90", data: series("p90"), backgroundColor: "#dd6b20" },
        { label: "max", data: series("max"), backgroundColor: "#a0aec0" },
      ],
    },
    options: { indexAxis: "y" },
  });
}

async function load() {
  const error = document.getElementById("error");
  error.textContent = "";
  document.getElementById("csv").href = "api/runs.csv?" + query();
  const response = await fetch("api/runs?" + query({ page, page_size: PAGE_SIZE }), { credentials: "same-origin" });
  if (!response.ok) {
    error.textContent = `Could not load runs: HTTP ${response.status}`;
    return;
  }
  const data = await response.json();
  for (const [name, values] of Object.entries(data.facets)) fillSelect(name, values);
  renderTable(data);
  renderCharts(data.charts);
  document.body.dataset.loaded = String(Date.now());
}

form.addEventListener("change", () => { page = 1; load(); });
document.getElementById("reset").addEventListener("click", () => { form.reset(); page = 1; load(); });
document.getElementById("prev").addEventListener("click", () => { page -= 1; load(); });
document.getElementById("next").addEventListener("click", () => { page += 1; load(); });
load();
