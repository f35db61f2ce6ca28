"""The emulator's Vertex face over plain HTTP: auth, validation, list filters and pages, faults
(server-wide HTTP faults, batch directives, transient item errors that recover when resent, invalid
structured answers), several predictions files, wildcard inputs and persistence across a restart."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jsonschema
import pytest
from conftest import create_buckets, local_gcsfs
from vertex_emu_support import (
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    auth,
    create_body,
    jobs_url,
    jsonl,
    request_line,
)

from batch_provider.emulator.process import EmulatorProcess, running_emulator


def _upload(gcs: Any, lines: list[dict[str, Any]], name: str | None = None) -> str:
    path = f"{INPUT_BUCKET}/in/{name or uuid.uuid4().hex + '.jsonl'}"
    gcs.pipe(path, jsonl(lines))
    return f"gs://{path}"


def _out() -> str:
    return f"gs://{OUTPUT_BUCKET}/out/{uuid.uuid4().hex}/"


def _create(emu: EmulatorProcess, body: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    resp = httpx.post(jobs_url(emu, version), json=body, headers=auth())
    assert resp.status_code == 200, resp.text
    return resp.json()


def _get(emu: EmulatorProcess, name: str) -> dict[str, Any]:
    resp = httpx.get(f"{emu.base_url}/v1/{name}", headers=auth())
    assert resp.status_code == 200, resp.text
    return resp.json()


def _lines(gcs: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    directory = job["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
    return [
        json.loads(line)
        for path in gcs.glob(directory + "/predictions*.jsonl")
        for line in gcs.cat(path).decode().splitlines()
    ]


def _list(emu: EmulatorProcess, **params: Any) -> dict[str, Any]:
    resp = httpx.get(jobs_url(emu), params=params, headers=auth())
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_token_is_required_and_errors_use_googles_envelope(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    denied = httpx.get(jobs_url(vertex_emu))
    assert denied.status_code == 401 and denied.json()["error"]["status"] == "UNAUTHENTICATED"
    missing = httpx.get(f"{jobs_url(vertex_emu)}/123", headers=auth())
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    src = _upload(gcs, [request_line("x")])
    for body, field in (
        ({**create_body(src, _out()), "displayName": ""}, "display_name"),
        ({**create_body(src, _out()), "inputConfig": {"gcsSource": {"uris": ["s3://x/y"]}}}, "gcs_source"),
        ({**create_body(src, _out()), "outputConfig": {}}, "output_uri_prefix"),
        ({**create_body(src, _out()), "labels": {"Bad Key": "v"}}, "labels"),
        ({**create_body(src, _out()), "displayName": "x emu_faults=nonsense"}, "emu_faults"),
    ):
        resp = httpx.post(jobs_url(vertex_emu), json=body, headers=auth())
        assert resp.status_code == 400, body
        assert (
            resp.json()["error"]["status"] == "INVALID_ARGUMENT" and field in resp.json()["error"]["message"]
        )


def test_input_problems_fail_the_job_not_the_call(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    bad_line = f"gs://{INPUT_BUCKET}/in/{uuid.uuid4().hex}.jsonl"
    gcs.pipe(bad_line.removeprefix("gs://"), jsonl([request_line("fine")]) + b"{not json\n")
    cases = {
        "line 2": bad_line,
        "no files": f"gs://{INPUT_BUCKET}/nothing-here/*.jsonl",
        "does not exist": f"gs://{INPUT_BUCKET}/in/absent-{uuid.uuid4().hex}.jsonl",
    }
    jobs = {why: _create(vertex_emu, create_body(uri, _out())) for why, uri in cases.items()}
    validated = _create(
        vertex_emu,
        create_body(_upload(gcs, [request_line("x")]), _out(), name="v emu_faults=fail_validation"),
    )
    vertex_emu.advance(60)
    for why, job in jobs.items():
        failed = _get(vertex_emu, job["name"])
        assert failed["state"] == "JOB_STATE_FAILED", why
        assert why in failed["error"]["message"].lower() and "outputInfo" not in failed
    assert "emulated fault" in _get(vertex_emu, validated["name"])["error"]["message"]


def test_jobs_wait_queued_and_one_that_never_leaves_the_queue_expires_empty(
    vertex_emu: EmulatorProcess, gcs: Any
) -> None:
    vertex_emu.vertex_settings(queued_seconds=7200)  # 12 real seconds at the fixture's time factor
    src = _upload(gcs, [request_line(f"row {i}") for i in range(3)])
    normal = _create(vertex_emu, create_body(src, _out()))
    stuck = _create(vertex_emu, create_body(src, _out(), name="stuck emu_faults=expire=0"))
    assert normal["state"] == stuck["state"] == "JOB_STATE_QUEUED" and "startTime" not in normal
    vertex_emu.advance(7200)
    assert _get(vertex_emu, normal["name"])["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    vertex_emu.advance(60)
    running = _get(vertex_emu, normal["name"])
    assert running["state"] == "JOB_STATE_RUNNING" and "startTime" in running
    assert _get(vertex_emu, stuck["name"])["state"] == "JOB_STATE_QUEUED"
    vertex_emu.advance(72 * 3600)
    assert _get(vertex_emu, normal["name"])["state"] == "JOB_STATE_SUCCEEDED"
    expired = _get(vertex_emu, stuck["name"])
    assert expired["state"] == "JOB_STATE_EXPIRED" and "startTime" not in expired
    assert expired["error"]["message"] and "completionStats" not in expired
    directory = expired["outputInfo"]["gcsOutputDirectory"] if "outputInfo" in expired else None
    assert directory is None or not gcs.exists(directory.removeprefix("gs://"))


def test_list_filters_and_pages(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    run = f"r{uuid.uuid4().hex[:12]}"
    src = _upload(gcs, [request_line("x")])
    names = []
    for i, flavour in enumerate(["alpha", "beta", "alpha"]):
        labels = {"bp_run": run, "flavour": flavour, "n": str(i)}
        names.append(_create(vertex_emu, create_body(src, _out(), name=f"{run}-{i}", labels=labels))["name"])
    httpx.post(f"{vertex_emu.base_url}/v1/{names[2]}:cancel", headers=auth()).raise_for_status()
    vertex_emu.advance(3600)

    def found(text: str) -> list[str]:
        return [j["name"] for j in _list(vertex_emu, filter=text)["batchPredictionJobs"]]

    assert found(f'labels.bp_run="{run}"') == names[::-1]  # newest first
    assert found(f'labels.bp_run="{run}" AND labels.flavour="alpha"') == [names[2], names[0]]
    assert found(f'labels.bp_run="{run}" AND NOT labels.flavour="alpha"') == [names[1]]
    assert found(f"labels.bp_run={run} labels.flavour!=alpha") == [names[1]]
    assert found(f'display_name="{run}-1" OR display_name="{run}-0"') == [names[1], names[0]]
    assert found(f'display_name="{run}-*" AND state=JOB_STATE_CANCELLED') == [names[2]]
    assert found(f'labels.bp_run="{run}" AND (state="JOB_STATE_SUCCEEDED" OR labels.n="2")') == names[::-1]
    assert found(f'labels.bp_run="{run}" AND -labels.n:*') == []
    assert found(f'labels.bp_run="{run}" AND model_display_name="gemini-2.5-flash"') == names[::-1]

    first = _list(vertex_emu, filter=f'labels.bp_run="{run}"', pageSize=2)
    assert [j["name"] for j in first["batchPredictionJobs"]] == names[:0:-1] and first["nextPageToken"]
    second = _list(vertex_emu, filter=f'labels.bp_run="{run}"', pageSize=2, pageToken=first["nextPageToken"])
    assert [j["name"] for j in second["batchPredictionJobs"]] == [names[0]] and "nextPageToken" not in second

    for bad in ('labels.bp_run="x" AND', "colour=red", "state:JOB_STATE_RUNNING", "(display_name=x"):
        resp = httpx.get(jobs_url(vertex_emu), params={"filter": bad}, headers=auth())
        assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT", bad


def test_server_wide_faults_reach_the_vertex_routes(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    run = f"r{uuid.uuid4().hex[:12]}"
    body = create_body(_upload(gcs, [request_line("x")]), _out(), name=run, labels={"bp_run": run})
    vertex_emu.set_faults(
        {"rules": [{"match": "POST /v1/projects/*", "kind": "429", "times": 1, "retry_after": 2}]}
    )
    limited = httpx.post(jobs_url(vertex_emu), json=body, headers=auth())
    assert limited.status_code == 429 and limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert limited.headers["retry-after"] == "2"
    assert _list(vertex_emu, filter=f'labels.bp_run="{run}"')["batchPredictionJobs"] == []

    vertex_emu.set_faults({"rules": [{"match": "POST /v1/projects/*", "kind": "drop", "times": 1}]})
    with pytest.raises(httpx.HTTPError):
        httpx.post(jobs_url(vertex_emu), json=body, headers=auth()).json()
    # the create took effect: a client finds the job by its labels instead of creating another
    assert len(_list(vertex_emu, filter=f'labels.bp_run="{run}"')["batchPredictionJobs"]) == 1

    vertex_emu.set_faults({"rules": [{"match": "GET /v1/projects/*", "kind": "503", "times": 1}]})
    unavailable = httpx.get(jobs_url(vertex_emu), headers=auth())
    assert unavailable.status_code == 503 and unavailable.json()["error"]["status"] == "UNAVAILABLE"
    assert httpx.get(jobs_url(vertex_emu), headers=auth()).status_code == 200
    assert vertex_emu.stats()["faults"]["http_drop"] >= 1


def test_transient_item_errors_recover_when_resent_and_permanent_ones_stay(
    vertex_emu: EmulatorProcess, gcs: Any
) -> None:
    vertex_emu.set_faults({"item_recovery": 1.0})
    tag = uuid.uuid4().hex

    def run(attempt: int) -> dict[str, dict[str, Any]]:
        lines = [
            request_line(f"{tag} busy [[emu:fail429]]", {"bp_id": f"busy-{attempt}"}),
            request_line(f"{tag} broken [[emu:fail400]]", {"bp_id": f"broken-{attempt}"}),
        ]
        job = _create(vertex_emu, create_body(_upload(gcs, lines), _out()))
        vertex_emu.advance(86400)
        return {
            o["request"]["labels"]["bp_id"].split("-")[0]: o
            for o in _lines(gcs, _get(vertex_emu, job["name"]))
        }

    first = run(1)
    assert '"code": 429' in first["busy"]["status"] and '"code": 400' in first["broken"]["status"]
    again = run(2)  # same requests, new labels (wire ids): a resend
    assert again["busy"]["status"] == "" and "response" in again["busy"]
    assert '"code": 400' in again["broken"]["status"]


def test_invalid_output_directive_breaks_structured_answers(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["a", "b"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
    }

    def line(text: str, row: str) -> dict[str, Any]:
        return request_line(
            text, {"bp_id": row}, responseMimeType="application/json", responseJsonSchema=schema
        )

    def answers(first_text: str) -> list[Any]:
        lines = [line(first_text, "r0"), *(line(f"classify {i}", f"r{i}") for i in range(1, 6))]
        job = _create(vertex_emu, create_body(_upload(gcs, lines), _out()))
        vertex_emu.advance(86400)
        out = _lines(gcs, _get(vertex_emu, job["name"]))
        return [o["response"]["candidates"][0]["content"]["parts"][0]["text"] for o in out]

    def valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    assert all(valid(t) for t in answers("classify 0"))
    assert not any(valid(t) for t in answers("classify 0 [[emu:invalid100]]"))


def test_predictions_split_into_files_and_wildcard_inputs(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    vertex_emu.vertex_settings(lines_per_file=3)
    folder = uuid.uuid4().hex
    for part in range(2):
        rows = [request_line(f"part {part} row {i}", {"bp_id": f"p{part}-{i}"}) for i in range(4)]
        _upload(gcs, rows, name=f"{folder}/part-{part}.jsonl")
    _upload(gcs, [request_line("not matched", {"bp_id": "other"})], name=f"{folder}/notes.txt")
    job = _create(vertex_emu, create_body(f"gs://{INPUT_BUCKET}/in/{folder}/part-*.jsonl", _out()))
    vertex_emu.advance(86400)
    done = _get(vertex_emu, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED" and done["completionStats"]["successfulCount"] == "8"
    directory = done["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
    names = sorted(p.rsplit("/", 1)[-1] for p in gcs.ls(directory))
    assert names == ["predictions_00001.jsonl", "predictions_00002.jsonl", "predictions_00003.jsonl"]
    ids = sorted(o["request"]["labels"]["bp_id"] for o in _lines(gcs, done))
    assert ids == sorted(f"p{part}-{i}" for part in range(2) for i in range(4))


def test_v1beta1_serves_the_same_jobs(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    job = _create(vertex_emu, create_body(_upload(gcs, [request_line("x")]), _out()), version="v1beta1")
    resp = httpx.get(f"{vertex_emu.base_url}/v1beta1/{job['name']}", headers=auth())
    assert (
        resp.status_code == 200
        and resp.json()["name"] == job["name"] == _get(vertex_emu, job["name"])["name"]
    )


def test_jobs_and_objects_survive_a_restart(tmp_path: Any) -> None:
    with running_emulator(time_factor=600.0, with_gcs=True, data_dir=tmp_path / "data") as emu:
        endpoint = str(emu.gcs_endpoint)
        create_buckets(endpoint, INPUT_BUCKET, OUTPUT_BUCKET)
        fs = local_gcsfs(endpoint)
        src = _upload(fs, [request_line(f"row {i}", {"bp_id": f"k{i}"}) for i in range(5)])
        job = _create(emu, create_body(src, _out(), labels={"bp_run": "restart"}))
        emu.advance(300)
        emu.restart()
        assert emu.gcs_endpoint == endpoint
        assert fs.exists(src.removeprefix("gs://"))
        listed = _list(emu, filter='labels.bp_run="restart"')["batchPredictionJobs"]
        assert [j["name"] for j in listed] == [job["name"]]
        emu.advance(86400)
        done = _get(emu, job["name"])
        assert done["state"] == "JOB_STATE_SUCCEEDED"
        assert sorted(o["request"]["labels"]["bp_id"] for o in _lines(fs, done)) == [
            f"k{i}" for i in range(5)
        ]
        assert emu.stats()["batches_created"].get("vertex", 0) == 0  # counters start again after a restart
        emu.vertex_settings(lines_per_file=7)
        emu.reset()
        assert _list(emu)["batchPredictionJobs"] == []
        settings = emu.vertex_settings()
        assert settings["lines_per_file"] == 100_000 and settings["gcs_endpoint"] == endpoint
        assert fs.exists(src.removeprefix("gs://")), "a reset forgets jobs, not the objects in GCS"


def test_settings_are_checked_and_partial_state_can_be_turned_off(
    vertex_emu: EmulatorProcess, gcs: Any
) -> None:
    url = f"{vertex_emu.base_url}/_emu/vertex"
    refused = httpx.post(url, json={"no_such_knob": 1, "lines_per_file": 5})
    assert refused.status_code == 400 and "no_such_knob" in refused.json()["error"]["message"]
    assert vertex_emu.vertex_settings()["lines_per_file"] == 100_000  # nothing changed
    assert vertex_emu.vertex_settings(partial_state="false")["partial_state"] is False
    lines = [request_line("fine", {"bp_id": "ok"}), request_line("x [[emu:fail500]]", {"bp_id": "bad"})]
    job = _create(vertex_emu, create_body(_upload(gcs, lines), _out()))
    vertex_emu.advance(86400)
    done = _get(vertex_emu, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED" and done["completionStats"]["failedCount"] == "1"
    assert vertex_emu.vertex_settings()["gcs_endpoint"] == vertex_emu.gcs_endpoint


def test_answers_depend_only_on_the_requests(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    src = _upload(
        gcs, [request_line(f"summarise item {i}", {"bp_id": f"d{i}"}, maxOutputTokens=40) for i in range(8)]
    )
    jobs = [_create(vertex_emu, create_body(src, _out())) for _ in range(2)]
    vertex_emu.advance(86400)

    def answers(job: dict[str, Any]) -> dict[str, Any]:
        return {
            o["request"]["labels"]["bp_id"]: o["response"] for o in _lines(gcs, _get(vertex_emu, job["name"]))
        }

    first, second = (answers(job) for job in jobs)
    assert sorted(first) == [f"d{i}" for i in range(8)] and first == second
    assert len({json.dumps(r["candidates"]) for r in first.values()}) > 1  # not one canned answer


def test_server_wide_batch_faults_apply_to_new_jobs(vertex_emu: EmulatorProcess, gcs: Any) -> None:
    vertex_emu.set_faults({"batch_faults": "item_errors=1:503", "item_recovery": 0})
    tag = uuid.uuid4().hex
    job = _create(
        vertex_emu, create_body(_upload(gcs, [request_line(f"{tag} {i}") for i in range(4)]), _out())
    )
    vertex_emu.advance(86400)
    done = _get(vertex_emu, job["name"])
    assert done["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED" and done["completionStats"]["failedCount"] == "4"
    statuses = [o["status"] for o in _lines(gcs, done)]
    assert len(statuses) == 4 and all(s.startswith("Service Unavailable: ") for s in statuses)
