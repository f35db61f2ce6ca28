"""The user guide in docs/: builds with ``mkdocs build --strict`` (a broken link or a page left
out of the nav fails), and every Python snippet in it runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
NOT_RUN = "<!-- snippet: not run"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def nav_pages() -> list[str]:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    return [next(iter(entry.values())) for entry in config["nav"]]


def test_the_guide_builds_in_strict_mode(tmp_path):
    result = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    for page in nav_pages():
        built = tmp_path / "site" / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert built.exists(), page


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a") as fh:
        fh.write("\nSee [the missing page](no-such-page.md).\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr


def test_every_page_is_in_the_nav():
    assert sorted(nav_pages()) == sorted(p.name for p in DOCS.glob("*.md"))


def snippets() -> list[dict]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
            if before.startswith(NOT_RUN):
                continue
            line = text.count("\n", 0, match.start()) + 2
            found.append({"where": f"{page.name}:{line}", "code": match.group(1)})
    return found


def test_snippets_are_found_and_few_are_exempt():
    assert len(snippets()) >= 10
    exempt = sum(p.read_text().count(NOT_RUN) for p in DOCS.glob("*.md"))
    assert exempt <= 2


def test_every_python_snippet_runs(tmp_path, emulator):
    url = emulator.base_url
    conns = {
        "AIRFLOW_CONN_LLM_OPENAI_DEFAULT": {"conn_type": "llm_openai", "host": f"{url}/v1"},
        "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT": {"conn_type": "llm_anthropic", "host": url},
        "AIRFLOW_CONN_LLM_GEMINI_DEFAULT": {"conn_type": "llm_gemini", "host": url},
    }
    env = {
        **os.environ,
        **{name: json.dumps({**value, "password": "sk-emulator"}) for name, value in conns.items()},
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "BATCH_PROVIDER_RUN_PATH": f"file://{tmp_path / 'runs'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    found = snippets()
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("run_snippets.py"))],
        input=json.dumps(found),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["where"] for r in reports] == [s["where"] for s in found]
    failed = {r["where"]: r["error"] for r in reports if r["error"]}
    assert not failed, "\n".join(f"{where}:\n{error}" for where, error in failed.items())
