"""The indexer actor on a real bus: a file in Object Store bucket `docs` and
`document.uploaded` → chunks in LanceDB and `document.indexed` (or `document.failed` with a
reason); `document.deleted` removes the chunks; a redelivery writes nothing twice. And the
`documents` read model that follows it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from actors.base import Actor
from actors.indexer import Indexer
from actors.runtime import ActorHost
from bus.admin import delete_consumer
from bus.blobs import put_document
from bus.client import Bus
from bus.consumer import Delivery
from bus.log import load
from bus.server import EmbeddedServer
from bus.subjects import subject_of
from projections.client import run_query
from projections.knowledge.store import store
from projections.runtime import ProjectionService
from schemas import (
    DocumentDeleted,
    DocumentFailed,
    DocumentIndexed,
    DocumentUploaded,
    Event,
    new_id,
)
from tests.fixtures.pdf import make_pdf

MARKDOWN = b"""# Kettle K2 manual

The K2 boils 1.7 litres in four minutes.

## Descaling

Fill the kettle with equal parts water and white vinegar. Let it stand for an hour, then boil
and rinse twice with clean water.

## Safety

Never immerse the base in water.
"""

HTML = b"""<html><head><title>Lamp</title><script>var secret = "tracking-script-text";</script>
<style>.x { color: red }</style></head><body><nav>Home | Shop</nav>
<h1>Desk lamp L1</h1><p>The L1 has three brightness levels &amp; a USB port.</p>
<h2>Changing the bulb</h2><p>Unplug the lamp, let the bulb cool, and turn it anticlockwise.</p>
</body></html>"""

TEXT = (b"Garden hose H5\n\nConnect the hose to an outdoor tap. Open the tap slowly.\n\n"
        b"Storage\nDrain the hose and store it indoors before the first frost.\n")


@pytest.fixture(scope="module")
def lance_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("indexer-data")


@pytest.fixture(scope="module")
async def mbus(module_nats: EmbeddedServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(module_nats.url, name="test-indexer")
    await b.declare()
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def host(mbus: Bus, lance_data: Path) -> AsyncIterator[ActorHost]:
    h = ActorHost(mbus, ["indexer"], data_dir=lance_data)
    await h.start()
    yield h
    await h.stop()


@pytest.fixture(scope="module")
async def read_models(mbus: Bus, lance_data: Path) -> AsyncIterator[ProjectionService]:
    service = ProjectionService(mbus, lance_data)
    await service.start()
    yield service
    await service.stop()


async def upload(bus: Bus, data: bytes, filename: str, content_type: str, *,
                 owner: str = "u1", title: str | None = None) -> DocumentUploaded:
    did = "doc" + new_id()
    await put_document(bus, did, data)
    event = DocumentUploaded(document_id=did, owner_id=owner, title=title or filename,
                             filename=filename, content_type=content_type, size=len(data),
                             object_name=did)
    await bus.publish(event)
    return event


async def outcome(bus: Bus, document_id: str, timeout: float = 60.0) -> DocumentIndexed | DocumentFailed:
    async with asyncio.timeout(timeout):
        while True:
            entries, _ = await load(bus, "doc", document_id)
            for entry in entries:
                if isinstance(entry.event, DocumentIndexed | DocumentFailed):
                    return entry.event
            await asyncio.sleep(0.05)


async def doc_events(bus: Bus, document_id: str) -> list[Event]:
    entries, _ = await load(bus, "doc", document_id)
    return [e.event for e in entries if e.event is not None]


async def test_every_format_is_indexed(mbus: Bus, host: ActorHost, lance_data: Path) -> None:
    pdf = make_pdf(["Printer P3 guide", "To clear a paper jam, open the rear cover and pull the "
                    "sheet out slowly with both hands.", "Toner",
                    "Replace the toner cartridge when the light blinks orange."])
    docs = await asyncio.gather(
        upload(mbus, TEXT, "hose.txt", "text/plain"),
        upload(mbus, MARKDOWN, "kettle.md", "text/markdown"),
        upload(mbus, HTML, "lamp.html", "text/html; charset=utf-8"),
        upload(mbus, pdf, "printer.pdf", "application/pdf"),
        upload(mbus, MARKDOWN, "kettle-again.md", "application/octet-stream"),  # by extension
    )
    chunks = store(lance_data)
    for doc in docs:
        result = await outcome(mbus, doc.document_id)
        assert isinstance(result, DocumentIndexed), result
        rows = chunks.document_chunks(doc.document_id)
        assert result.chunks == len(rows) > 0
        assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
        assert {r["owner_id"] for r in rows} == {"u1"} and {r["title"] for r in rows} == {doc.title}
        assert result.causation_id == doc.id
    text = {doc.filename: " ".join(r["text"] for r in chunks.document_chunks(doc.document_id))
            for doc in docs}
    headings = {doc.filename: {r["heading"] for r in chunks.document_chunks(doc.document_id)}
                for doc in docs}
    assert "Drain the hose" in text["hose.txt"] and "Garden hose H5 › Storage" in headings["hose.txt"]
    assert "white vinegar" in text["kettle.md"] and "#" not in text["kettle.md"]
    assert "Kettle K2 manual › Descaling" in headings["kettle.md"]
    assert "three brightness levels & a USB port" in text["lamp.html"]
    assert "tracking-script-text" not in text["lamp.html"] and "color" not in text["lamp.html"]
    assert "Home | Shop" not in text["lamp.html"]
    assert "Desk lamp L1 › Changing the bulb" in headings["lamp.html"]
    assert "pull the sheet out slowly" in text["printer.pdf"]
    assert text["kettle-again.md"] == text["kettle.md"]


@pytest.mark.parametrize(("data", "filename", "content_type", "reason"), [
    (b"", "empty.txt", "text/plain", "empty file (0 bytes)"),
    (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 9 0 R",
     "broken.pdf", "application/pdf", "cannot read the PDF"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "picture.pdf", "application/pdf", "not a PDF file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "picture.png", "image/png", "unsupported type 'image/png'"),
    (bytes(range(256)) * 4, "binary.txt", "text/plain", "not a text file"),
    (b"<html><script>only()</script></html>", "blank.html", "text/html", "no text found"),
])
async def test_unreadable_documents_fail_with_a_reason(
        mbus: Bus, host: ActorHost, lance_data: Path,
        data: bytes, filename: str, content_type: str, reason: str) -> None:
    doc = await upload(mbus, data, filename, content_type)
    result = await outcome(mbus, doc.document_id)
    assert isinstance(result, DocumentFailed), result
    assert result.reason.startswith(reason), result.reason
    assert store(lance_data).count(f"document_id = '{doc.document_id}'") == 0


async def test_a_missing_file_fails(mbus: Bus, host: ActorHost) -> None:
    did = "doc" + new_id()
    await mbus.publish(DocumentUploaded(document_id=did, owner_id="u1", title="ghost",
                                        filename="ghost.txt", object_name=did))
    result = await outcome(mbus, did)
    assert isinstance(result, DocumentFailed) and "not in the docs bucket" in result.reason


async def test_delete_removes_the_chunks(mbus: Bus, host: ActorHost, lance_data: Path) -> None:
    keep = await upload(mbus, TEXT, "keep.txt", "text/plain")
    gone = await upload(mbus, MARKDOWN, "gone.md", "text/markdown")
    assert isinstance(await outcome(mbus, gone.document_id), DocumentIndexed)
    assert isinstance(await outcome(mbus, keep.document_id), DocumentIndexed)
    chunks = store(lance_data)
    assert chunks.count(f"document_id = '{gone.document_id}'") > 0
    await mbus.publish(DocumentDeleted(document_id=gone.document_id))
    async with asyncio.timeout(20):
        while chunks.count(f"document_id = '{gone.document_id}'"):
            await asyncio.sleep(0.05)
    assert chunks.count(f"document_id = '{keep.document_id}'") > 0


async def test_a_redelivered_upload_writes_nothing_twice(
        mbus: Bus, host: ActorHost, lance_data: Path) -> None:
    doc = await upload(mbus, MARKDOWN * 6, "long.md", "text/markdown")
    first = await outcome(mbus, doc.document_id)
    assert isinstance(first, DocumentIndexed) and first.chunks > 1
    chunks = store(lance_data)
    before = chunks.document_chunks(doc.document_id)
    # The same message again, as JetStream redelivers it after a crash before the ack.
    entries, _ = await load(mbus, "doc", doc.document_id)
    seq = next(e.seq for e in entries if e.event is not None and e.event.id == doc.id)
    actor = host.actors[0]
    assert isinstance(actor, Indexer)
    await Actor.on_event(actor, doc, Delivery(stream="DOCS", seq=seq, subject=subject_of(doc),
                                              headers={}, num_delivered=2))
    assert chunks.document_chunks(doc.document_id) == before
    indexed = [e for e in await doc_events(mbus, doc.document_id) if isinstance(e, DocumentIndexed)]
    assert indexed == [first]  # the re-emitted event has the same id: stored once


async def test_an_upload_redelivered_after_its_delete_stays_deleted(
        mbus: Bus, host: ActorHost, lance_data: Path) -> None:
    doc = await upload(mbus, TEXT, "brief.txt", "text/plain")
    assert isinstance(await outcome(mbus, doc.document_id), DocumentIndexed)
    await mbus.publish(DocumentDeleted(document_id=doc.document_id))
    chunks = store(lance_data)
    async with asyncio.timeout(20):
        while chunks.count(f"document_id = '{doc.document_id}'"):
            await asyncio.sleep(0.05)
    entries, _ = await load(mbus, "doc", doc.document_id)
    seq = next(e.seq for e in entries if e.event is not None and e.event.id == doc.id)
    await Actor.on_event(host.actors[0], doc, Delivery(stream="DOCS", seq=seq, subject=subject_of(doc),
                                                       headers={}, num_delivered=3))
    assert chunks.count(f"document_id = '{doc.document_id}'") == 0


async def test_the_documents_read_model(mbus: Bus, host: ActorHost, lance_data: Path,
                                        read_models: ProjectionService) -> None:
    owner = "owner" + new_id()
    good = await upload(mbus, MARKDOWN, "kettle.md", "text/markdown", owner=owner, title="Kettle")
    bad = await upload(mbus, b"", "empty.txt", "text/plain", owner=owner, title="Empty")
    gone = await upload(mbus, TEXT, "hose.txt", "text/plain", owner=owner, title="Hose")
    other = await upload(mbus, TEXT, "theirs.txt", "text/plain", owner="someone-else")
    indexed = await outcome(mbus, good.document_id)
    for doc in (bad, gone, other):
        await outcome(mbus, doc.document_id)
    await mbus.publish(DocumentDeleted(document_id=gone.document_id))
    await asyncio.sleep(0.2)

    columns, rows = await run_query(mbus, lance_data, "documents",
                                    {"owner_id": owner, "after": "", "limit": 10}, fresh=True)
    listed = {r[columns.index("document_id")]: dict(zip(columns, r, strict=True)) for r in rows}
    assert set(listed) == {good.document_id, bad.document_id}  # the deleted one is gone
    row = listed[good.document_id]
    assert (row["status"], row["chunks"], row["error"]) == ("indexed", indexed.chunks, None)
    assert (row["title"], row["filename"], row["content_type"], row["size"]) == (
        "Kettle", "kettle.md", "text/markdown", len(MARKDOWN))
    assert row["uploaded_ts"] == good.ts and row["indexed_ts"] == indexed.ts
    failed = listed[bad.document_id]
    assert (failed["status"], failed["chunks"], failed["error"]) == ("failed", 0, "empty file (0 bytes)")

    _, mine = await run_query(mbus, lance_data, "document",
                              {"document_id": good.document_id, "owner_id": owner})
    assert len(mine) == 1
    _, theirs = await run_query(mbus, lance_data, "document",
                                {"document_id": other.document_id, "owner_id": owner})
    assert theirs == []  # another owner's document is not found


async def test_two_hosts_in_one_process_keep_their_own_data_directories(
        mbus: Bus, tmp_path: Path) -> None:
    """The data directory is each host's own, not the process's: two indexers side by side
    write each into theirs."""
    run = new_id()

    class IndexerA(Indexer):  # durables of their own: both get every upload
        name: ClassVar[str] = f"indexer_a_{run}"

    class IndexerB(Indexer):
        name: ClassVar[str] = f"indexer_b_{run}"

    first, second = tmp_path / "a", tmp_path / "b"
    hosts = [ActorHost(mbus, [IndexerA], data_dir=first), ActorHost(mbus, [IndexerB], data_dir=second)]
    for h in hosts:
        await h.start()
    try:
        doc = await upload(mbus, MARKDOWN, "kettle.md", "text/markdown")
        async with asyncio.timeout(60):  # one shared directory would leave the other empty
            while not (store(first).document_chunks(doc.document_id)
                       and store(second).document_chunks(doc.document_id)):
                await asyncio.sleep(0.05)
    finally:
        for h in hosts:
            await h.stop()
        for name in (IndexerA.name, IndexerB.name):
            await delete_consumer(mbus, "DOCS", name)


async def test_an_indexer_without_a_data_directory_refuses_to_start(mbus: Bus) -> None:
    with pytest.raises(ValueError, match="data directory"):
        await ActorHost(mbus, ["indexer"]).start()
