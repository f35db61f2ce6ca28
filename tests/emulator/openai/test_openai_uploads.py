"""``POST /v1/files``: the multipart body is streamed, its file part written straight to disk."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from batch_provider.emulator.process import EmulatorProcess, running_emulator

AUTH = {"Authorization": "Bearer sk-emulator-test"}
BOUNDARY = "emu-boundary-123"


def _multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart body of (name, filename or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _post(emu: EmulatorProcess, body: bytes, content_type: str | None = None) -> httpx.Response:
    headers = {**AUTH, "content-type": content_type or f"multipart/form-data; boundary={BOUNDARY}"}
    return httpx.post(f"{emu.base_url}/v1/files", content=body, headers=headers)


def _stored_contents(emu: EmulatorProcess) -> set[str]:
    return {p.stem for p in (emu.data_dir / "files").glob("*.bin")}


def test_upload_keeps_bytes_and_filename(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    content = b'{"a": 1}\r\n--not-the-boundary\r\n\x00\xff' * 50_000 + "é\n".encode()
    f = oai.files.create(file=("données.jsonl", content), purpose="batch")
    assert f.bytes == len(content) and f.filename == "données.jsonl" and f.purpose == "batch"
    assert oai.files.content(f.id).content == content
    empty = oai.files.create(file=("empty.jsonl", b""), purpose="user_data")
    assert empty.bytes == 0 and empty.expires_at is None


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("file", "a.jsonl", b"{}")], "'purpose'"),
        ([("purpose", None, b"nope"), ("file", "a.jsonl", b"{}")], "Invalid value for 'purpose'"),
        ([("purpose", None, b"batch")], "'file'"),
        ([("purpose", None, b"batch"), ("file", None, b"{}")], "'file'"),
        ([("purpose", None, b"batch"), ("upload", "a.jsonl", b"{}")], "'file'"),
        ([("purpose", None, b"batch"), ("file", "a", b"1"), ("file", "b", b"2")], "Too many files"),
        ([("purpose", None, b"batch"), *[(f"f{i}", None, b"x") for i in range(17)]], "Too many fields"),
        ([("purpose", None, b"batch"), ("note", None, b"x" * (1 << 20) + b"x")], "maximum size"),
        (
            [("purpose", None, b"batch"), ("expires_after[anchor]", None, b"created_at"),
             ("expires_after[seconds]", None, b"60"), ("file", "a.jsonl", b"{}")],
            "expires_after",
        ),
    ],
)
def test_bad_forms_are_400_and_store_nothing(
    emu: EmulatorProcess, parts: list[tuple[str, str | None, bytes]], message: str
) -> None:
    before = _stored_contents(emu)
    r = _post(emu, _multipart(*parts))
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert _stored_contents(emu) == before


def test_cut_or_malformed_bodies_are_400(emu: EmulatorProcess) -> None:
    before = _stored_contents(emu)
    cut = _multipart(("purpose", None, b"batch"), ("file", "a.jsonl", b"{}" * 1000), close=False)
    r = _post(emu, cut[: len(cut) - 100])
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]
    r = _post(emu, _multipart(("purpose", None, b"batch")), content_type="multipart/form-data")
    assert r.status_code == 400 and "boundary" in r.json()["error"]["message"]
    r = _post(emu, b"purpose=batch", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]
    r = _post(emu, b"purpose=nope", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and "'purpose'" in r.json()["error"]["message"]
    assert _stored_contents(emu) == before


@pytest.fixture(scope="module")
def small_uploads() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=1.0, extra_args=["--set", "openai_max_upload_bytes=1000"]) as proc:
        yield proc


def test_upload_over_the_limit_is_refused_and_the_connection_stays_usable(
    small_uploads: EmulatorProcess,
) -> None:
    with httpx.Client(base_url=small_uploads.base_url, headers=AUTH) as client:
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        body = _multipart(("purpose", None, b"batch"), ("file", "big.jsonl", b"x" * 200_000))
        r = client.post("/v1/files", content=body, headers=headers)
        assert r.status_code == 400 and "too large" in r.json()["error"]["message"]
        ok = _multipart(("purpose", None, b"batch"), ("file", "ok.jsonl", b"y" * 1000))
        r = client.post("/v1/files", content=ok, headers=headers)
        assert r.status_code == 200 and r.json()["bytes"] == 1000
    assert _stored_contents(small_uploads) == {r.json()["id"]}
