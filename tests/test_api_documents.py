"""/api/v1/documents and /api/v1/search over HTTP, with the real indexer actor: every format
goes from `uploaded` to `indexed`, empty and broken files to `failed`, a file over the limit
is refused with nothing stored; isolation, pages, deletion, Idempotency-Key, and search
finding the right document. Every answer is checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.js.errors
import pytest
import schemathesis

from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from edge.app import OPENAPI_PATH
from projections.knowledge.store import store
from tests.api_harness import Api, api_config, serve_api
from tests.fixtures.pdf import make_pdf
from tests.test_api_openapi import validate as validate_json

Headers = dict[str, str]
CORPUS = Path(__file__).parent / "fixtures" / "corpus"
TYPES = {".txt": "text/plain", ".md": "text/markdown", ".html": "text/html", ".pdf": "application/pdf"}
MB = 1_048_576


@pytest.fixture(scope="module")
async def kb(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """The API and the indexer actor sharing one data dir (the chunks live in its `lance`)."""
    data = tmp_path_factory.mktemp("kb")
    bus = await Bus.connect(module_nats.url, name="test-api-documents-indexer")
    await bus.declare()
    host = ActorHost(bus, ["indexer"], data_dir=data)
    await host.start()
    try:
        async with serve_api(module_nats.url, data) as api:
            yield api
    finally:
        await host.stop()
        await bus.close()


@pytest.fixture(scope="module")
async def schema(kb: Api) -> Any:
    return schemathesis.openapi.from_dict((await kb.client.get(OPENAPI_PATH)).json())


def validate(schema: Any, r: httpx.Response) -> None:
    """`r` against the document (a multipart request body is a stream: read it first)."""
    if r.request.method == "POST":
        r.request.read()
    validate_json(schema, r)


async def upload(api: Api, h: Headers, filename: str, data: bytes, content_type: str | None = None, *,
                 title: str | None = None, headers: Headers | None = None) -> httpx.Response:
    kind = content_type or TYPES.get(Path(filename).suffix, "application/octet-stream")
    return await api.client.post("/api/v1/documents", headers={**h, **(headers or {})},
                                 files={"file": (filename, data, kind)},
                                 data={"title": title} if title is not None else None)


async def accepted(api: Api, schema: Any, h: Headers, filename: str, data: bytes, **kw: Any
                   ) -> dict[str, Any]:
    r = await upload(api, h, filename, data, **kw)
    assert r.status_code == 202, r.text
    validate(schema, r)
    body = r.json()
    assert body["status"] == "uploaded" and body["size"] == len(data) and body["chunks"] == 0
    assert r.headers["location"] == f"/api/v1/documents/{body['document_id']}"
    return body


async def settled(api: Api, schema: Any, h: Headers, document_id: str, timeout: float = 60
                  ) -> dict[str, Any]:
    """The document once the indexer has answered."""
    async with asyncio.timeout(timeout):
        while True:
            r = await api.client.get(f"/api/v1/documents/{document_id}", headers=h)
            assert r.status_code == 200, r.text
            if r.json()["status"] != "uploaded":
                validate(schema, r)
                return r.json()
            await asyncio.sleep(0.1)


async def get(api: Api, schema: Any, path: str, h: Headers, status: int = 200, **params: Any) -> Any:
    r = await api.client.get(path, headers=h, params=params)
    assert r.status_code == status, (path, r.text)
    validate(schema, r)
    return r.json()


async def walk(api: Api, path: str, h: Headers, key: str, limit: int = 2) -> list[Any]:
    ids: list[Any] = []
    cursor = None
    for _ in range(1000):
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await api.client.get(path, headers=h, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [item[key] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        assert len(page["items"]) == limit
    raise AssertionError("the cursor never ended")


async def stored(api: Api) -> tuple[int, int]:
    """(document events, Object Store messages of bucket `docs`)."""
    js = api.services.bus.js
    return ((await js.stream_info("DOCS")).state.messages, (await js.stream_info("OBJ_docs")).state.messages)


async def test_each_format_goes_from_uploaded_to_indexed(kb: Api, schema: Any) -> None:
    h = await kb.user()
    files = ["brewmaster-espresso.txt", "solaris-thermostat.md", "nimbus-router.html", "pixelpro-camera.pdf"]
    for name in files:
        data = (CORPUS / name).read_bytes()
        body = await accepted(kb, schema, h, name, data)
        assert body["filename"] == name and body["content_type"] == TYPES[Path(name).suffix]
        assert body["title"] == Path(name).stem and body["indexed_at"] is None
        done = await settled(kb, schema, h, body["document_id"])
        assert done["status"] == "indexed", done
        assert done["chunks"] > 0 and done["error"] is None and done["indexed_at"] >= done["uploaded_at"]
        chunks = (await get(kb, schema, f"/api/v1/documents/{body['document_id']}/chunks", h,
                            limit=100))["items"]
        assert [c["chunk_index"] for c in chunks] == list(range(done["chunks"]))
        assert {c["document_id"] for c in chunks} == {body["document_id"]}
        assert all(c["text"].strip() for c in chunks)
        text = " ".join(c["text"] for c in chunks)
        assert "<script" not in text and "%PDF" not in text
        pages = await walk(kb, f"/api/v1/documents/{body['document_id']}/chunks", h, "chunk_index", limit=1)
        assert pages == list(range(done["chunks"]))
    listed = await get(kb, schema, "/api/v1/documents", h)
    assert sorted(d["filename"] for d in listed["items"]) == sorted(files)
    assert {d["status"] for d in listed["items"]} == {"indexed"}


async def test_an_empty_file_and_a_broken_pdf_fail_with_a_reason(kb: Api, schema: Any) -> None:
    h = await kb.user()
    empty = await accepted(kb, schema, h, "empty.txt", b"")
    broken = await accepted(kb, schema, h, "broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    blank = await accepted(kb, schema, h, "blank.pdf", make_pdf([]))
    for body in (empty, broken, blank):
        done = await settled(kb, schema, h, body["document_id"])
        assert done["status"] == "failed" and done["chunks"] == 0 and done["error"], done
        chunks = await get(kb, schema, f"/api/v1/documents/{body['document_id']}/chunks", h)
        assert chunks == {"items": [], "next_cursor": None}
    assert "empty" in (await settled(kb, schema, h, empty["document_id"]))["error"]


async def test_a_file_over_the_limit_gets_413_and_nothing_is_stored(
        kb: Api, schema: Any, module_nats: EmbeddedServer, tmp_path: Path) -> None:
    h = await kb.user()
    before = await stored(kb)
    assert kb.services.config.edge.max_upload_bytes == 20 * MB
    r = await upload(kb, h, "huge.txt", b"a" * (50 * MB))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    assert r.json()["error"]["details"] == {"limit": 20 * MB}
    validate(schema, r)
    assert await stored(kb) == before
    assert (await get(kb, schema, "/api/v1/documents", h))["items"] == []

    # The limit to the byte, on an edge with a small one (`[edge] max_upload_bytes`).
    limit = 64_000
    config = api_config()
    config.edge = msgspec.structs.replace(config.edge, max_upload_bytes=limit)
    (tmp_path / "small").mkdir()
    async with serve_api(module_nats.url, tmp_path / "small", config) as small:
        h = await small.user()

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: refused as it streams in
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 4096
            yield b"\r\n--b--\r\n"

        r = await small.client.post("/api/v1/documents", content=chunked(),
                                    headers={**h, "content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
        # One byte over, with room for the form around it: the file itself is measured.
        r = await upload(small, h, "over.txt", b"b" * (limit + 1))
        assert r.status_code == 413 and r.json()["error"]["details"] == {"limit": limit}, r.text
        assert await stored(kb) == before
        r = await upload(small, h, "full.txt", b"word " * (limit // 5))
        assert r.status_code == 202 and r.json()["size"] == limit, r.text


async def test_uploads_that_are_not_documents_are_refused(kb: Api, schema: Any) -> None:
    h = await kb.user()
    before = await stored(kb)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"files": {"file": ("tool.exe", b"MZ\x90\x00", "application/octet-stream")}}, 415,
         "unsupported_type"),
        ({"files": {"file": ("sheet.xlsx", b"PK\x03\x04", "application/vnd.ms-excel")}}, 415,
         "unsupported_type"),
        ({"files": {"title": (None, "no file")}}, 422, "validation_failed"),
        ({"files": {"file": (None, "text, not a file")}}, 422, "validation_failed"),
        ({"files": {"file": ("a.txt", b"x", "text/plain"), "other": (None, "x")}}, 422, "validation_failed"),
        ({"files": {"file": ("a.txt", b"x", "text/plain")}, "data": {"title": "t" * 201}}, 422,
         "validation_failed"),
        ({"files": [("file", ("a.txt", b"x", "text/plain")), ("file", ("b.txt", b"y", "text/plain"))]}, 422,
         "validation_failed"),
        ({"files": [("file", (f"{i}.txt", b"x", "text/plain")) for i in range(4)]}, 400,
         "malformed_multipart"),
        ({"json": {"file": "hello"}}, 415, "unsupported_media_type"),
        ({"content": b"--x\r\nnot a form", "headers": {"content-type": "multipart/form-data"}}, 400,
         "malformed_multipart"),
    ]
    for kwargs, status, code in cases:
        extra = kwargs.pop("headers", {})
        r = await kb.client.post("/api/v1/documents", headers={**h, **extra}, **kwargs)
        assert r.status_code == status and r.json()["error"]["code"] == code, (kwargs, r.text)
        validate(schema, r)
    assert await stored(kb) == before
    r = await kb.client.post("/api/v1/documents", files={"file": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 401


async def test_the_type_comes_from_the_name_or_else_the_content_type(kb: Api, schema: Any) -> None:
    h = await kb.user()
    body = await accepted(kb, schema, h, "NOTES", b"# Notes\n\nSome words here.",
                          content_type="text/markdown")
    assert body["content_type"] == "text/markdown" and body["title"] == "NOTES"
    body = await accepted(kb, schema, h, "../../etc/Passwords File.TXT", b"plain words",
                          content_type="application/octet-stream", title="  My   notes ")
    assert body["filename"] == "Passwords File.TXT" and body["content_type"] == "text/plain"
    assert body["title"] == "My notes"
    assert (await settled(kb, schema, h, body["document_id"]))["status"] == "indexed"


async def test_documents_are_their_owners_alone(kb: Api, schema: Any) -> None:
    a, b = await kb.user(), await kb.user()
    secret = (b"Project Zebra\n\nThe launch code of Project Zebra is 4471. Only the night shift "
              b"may open the blue vault in the basement.")
    mine = await accepted(kb, schema, a, "zebra.txt", secret)
    theirs = await accepted(kb, schema, b, "garden.txt", b"Water the tomatoes every morning in summer.")
    for body, h in ((mine, a), (theirs, b)):
        assert (await settled(kb, schema, h, body["document_id"]))["status"] == "indexed"
    did = mine["document_id"]
    for path in (f"/api/v1/documents/{did}", f"/api/v1/documents/{did}/chunks"):
        assert (await get(kb, schema, path, b, status=404))["error"]["code"] == "not_found"
    r = await kb.client.delete(f"/api/v1/documents/{did}", headers=b)
    assert r.status_code == 404
    validate(schema, r)
    assert [d["document_id"] for d in (await get(kb, schema, "/api/v1/documents", b))["items"]] == [
        theirs["document_id"]]
    # B's search never reaches A's chunks, however well they match.
    for q in ("What is the launch code of Project Zebra?", "Project Zebra 4471 blue vault night shift"):
        found = await get(kb, schema, "/api/v1/search", b, q=q, limit=50)
        assert {hit["document_id"] for hit in found["hits"]} <= {theirs["document_id"]}
        assert "Zebra" not in json.dumps(found["hits"])
        found = await get(kb, schema, "/api/v1/search", a, q=q)
        assert found["hits"][0]["document_id"] == did and "4471" in found["hits"][0]["text"]
    # A's assistant is not B's to search with.
    aid = (await kb.client.get("/api/v1/me", headers=a)).json()["default_assistant_id"]
    assert (await get(kb, schema, "/api/v1/search", b, q="launch code", assistant_id=aid,
                      status=404))["error"]["code"] == "not_found"
    # Nor can B give A's document to an assistant.
    r = await kb.client.post("/api/v1/assistants", headers=b, json={"name": "Thief", "documents": [did]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_document", r.text


async def test_documents_come_a_page_at_a_time(kb: Api, schema: Any) -> None:
    h = await kb.user()
    ids = [(await accepted(kb, schema, h, f"note{i}.txt", f"Note number {i}.".encode()))["document_id"]
           for i in range(5)]
    assert await walk(kb, "/api/v1/documents", h, "document_id") == sorted(ids)
    first = await get(kb, schema, "/api/v1/documents", h, limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await get(kb, schema, "/api/v1/documents", h, limit=100, cursor=first["next_cursor"])
    assert [d["document_id"] for d in rest["items"]] == sorted(ids)[2:]
    r = await kb.client.get("/api/v1/documents", headers=h, params={"limit": 101})
    assert r.status_code == 422


async def test_delete_removes_the_document_its_chunks_and_its_file(kb: Api, schema: Any) -> None:
    h = await kb.user()
    body = await accepted(kb, schema, h, "kayak.txt", (CORPUS / "harbor-kayak.txt").read_bytes())
    did = body["document_id"]
    assert (await settled(kb, schema, h, did))["status"] == "indexed"
    question = "What pressure should the kayak floor be pumped to?"
    assert (await get(kb, schema, "/api/v1/search", h, q=question))["hits"][0]["document_id"] == did
    chunks = store(kb.services.data_dir)
    assert chunks.document_chunks(did)
    r = await kb.client.delete(f"/api/v1/documents/{did}", headers=h)
    assert r.status_code == 204 and r.content == b""
    validate(schema, r)
    for path in (f"/api/v1/documents/{did}", f"/api/v1/documents/{did}/chunks"):
        await get(kb, schema, path, h, status=404)
    r = await kb.client.delete(f"/api/v1/documents/{did}", headers=h)
    assert r.status_code == 404
    assert (await get(kb, schema, "/api/v1/documents", h))["items"] == []
    async with asyncio.timeout(30):  # the indexer removes the chunks
        while chunks.document_chunks(did):
            await asyncio.sleep(0.1)
    assert (await get(kb, schema, "/api/v1/search", h, q=question))["hits"] == []
    objects = await kb.services.bus.js.object_store("docs")
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await objects.get(did)


async def test_a_retried_upload_with_the_same_key_is_stored_once(kb: Api, schema: Any) -> None:
    h = await kb.user()
    key = {"Idempotency-Key": "upload-manual-1"}
    data = (CORPUS / "solaris-thermostat.md").read_bytes()
    first = await upload(kb, h, "thermostat.md", data, headers=key)
    assert first.status_code == 202, first.text
    again = await upload(kb, h, "thermostat.md", data, headers=key)  # a new boundary, the same form
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    validate(schema, again)
    other = await upload(kb, h, "thermostat.md", data + b"\nmore", headers=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    listed = await get(kb, schema, "/api/v1/documents", h)
    assert [d["document_id"] for d in listed["items"]] == [first.json()["document_id"]]


async def test_search_finds_the_document_that_answers(kb: Api, schema: Any) -> None:
    h = await kb.user()
    ids: dict[str, str] = {}
    for path in sorted(CORPUS.iterdir()):
        if path.suffix in TYPES:
            ids[path.name] = (await accepted(kb, schema, h, path.name, path.read_bytes()))["document_id"]
    for did in ids.values():
        assert (await settled(kb, schema, h, did))["status"] == "indexed"
    questions = json.loads((CORPUS / "questions.json").read_text())
    right = 0
    for item in questions:
        found = await get(kb, schema, "/api/v1/search", h, q=item["question"], limit=3)
        assert found["query"] == item["question"] and len(found["hits"]) == 3
        scores = [hit["score"] for hit in found["hits"]]
        assert scores == sorted(scores, reverse=True)
        right += ids[item["document"]] in [hit["document_id"] for hit in found["hits"]]
    assert right >= 9, f"the right document in the top 3 for only {right} of {len(questions)}"
    hit = (await get(kb, schema, "/api/v1/search", h, q="kayak floor pressure", limit=1))["hits"][0]
    assert hit["document_id"] == ids["harbor-kayak.txt"] and hit["title"] == "harbor-kayak"
    # An assistant's knowledge base narrows the search to its documents.
    r = await kb.client.post("/api/v1/assistants", headers=h,
                             json={"name": "Paddler", "documents": [ids["harbor-kayak.txt"]]})
    assert r.status_code == 201, r.text
    aid = r.json()["assistant_id"]
    found = await get(kb, schema, "/api/v1/search", h, assistant_id=aid, limit=10,
                      q="How can I restore my router to its factory settings?")
    assert found["hits"] and {hit["document_id"] for hit in found["hits"]} == {ids["harbor-kayak.txt"]}
    bare = (await kb.client.get("/api/v1/me", headers=h)).json()["default_assistant_id"]
    assert (await get(kb, schema, "/api/v1/search", h, q="router", assistant_id=bare))["hits"] == []


async def test_search_parameters_are_checked(kb: Api, schema: Any) -> None:
    h = await kb.user()
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "x" * 1001}, {"q": "a", "limit": 0},
                   {"q": "a", "limit": 51}, {"q": "a", "limit": "many"}):
        r = await kb.client.get("/api/v1/search", headers=h, params=params)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", (params, r.text)
        validate(schema, r)
    await get(kb, schema, "/api/v1/search", h, status=404, q="a", assistant_id="NOSUCHASSISTANT")
    await get(kb, schema, "/api/v1/search", h, status=404, q="a", assistant_id="a.b")
    assert (await get(kb, schema, "/api/v1/search", h, q="anything at all"))["hits"] == []
    assert (await kb.client.get("/api/v1/search", params={"q": "a"})).status_code == 401
