"""The knowledge base rebuilt from the log: `vagent docs reindex` into an empty data
directory makes the same chunks the indexer made (live documents only), removes stray
chunks, and records an outcome in the log only where it changed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from projections.knowledge.search import search_sync
from projections.knowledge.store import LAYOUT, LAYOUT_FILE, ChunkStore, Row, store
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed
from tests.procs import vagent
from tests.test_indexer import HTML, MARKDOWN, TEXT, doc_events, lance_data, mbus, outcome, upload

__all__ = ["lance_data", "mbus"]  # fixtures, for this module's own server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def indexed(mbus: Bus, lance_data: Path) -> AsyncIterator[dict[str, str]]:
    """Three documents indexed, one failed, one indexed then deleted: name → document id."""
    host = ActorHost(mbus, ["indexer"], data_dir=lance_data)
    await host.start()
    try:
        docs = dict(zip(("kettle", "lamp", "hose", "broken", "gone"), await asyncio.gather(
            upload(mbus, MARKDOWN, "kettle.md", "text/markdown"),
            upload(mbus, HTML, "lamp.html", "text/html"),
            upload(mbus, TEXT, "hose.txt", "text/plain", owner="u2"),
            upload(mbus, b"%PDF-1.7\nnot really", "broken.pdf", "application/pdf"),
            upload(mbus, TEXT, "gone.txt", "text/plain"),
        ), strict=True))
        for doc in docs.values():
            await outcome(mbus, doc.document_id)
        await mbus.publish(DocumentDeleted(document_id=docs["gone"].document_id))
        async with asyncio.timeout(30):
            while store(lance_data).document_chunks(docs["gone"].document_id):
                await asyncio.sleep(0.05)
        yield {name: doc.document_id for name, doc in docs.items()}
    finally:
        await host.stop()


def reindex(nats: str, data: Path, **env: str) -> dict[str, object]:
    done = vagent("docs", "reindex", "--nats", nats, "--data-dir", str(data), "--json", timeout=300, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_an_empty_directory_gets_the_same_chunks(module_nats: EmbeddedServer, mbus: Bus,
                                                       indexed: dict[str, str], lance_data: Path,
                                                       tmp_path: Path) -> None:
    rebuilt = tmp_path / "data"
    report = reindex(module_nats.url, rebuilt)
    original = store(lance_data)
    live = ("kettle", "lamp", "hose")
    assert report["indexed"] == {indexed[n]: len(original.document_chunks(indexed[n])) for n in live}
    assert set(report["failed"]) == {indexed["broken"]}
    assert report["missing"] == [] and report["removed"] == 0
    assert report["recorded"] == []  # every outcome is the one the log already holds

    fresh = ChunkStore.open(rebuilt)
    assert fresh.count() == original.count() == sum(report["indexed"].values())
    assert fresh.document_chunks(indexed["gone"]) == []
    for name in live:
        def rows(chunks: ChunkStore) -> list[tuple[object, ...]]:
            return [(r["chunk_index"], r["heading"], r["text"], r["owner_id"], r["title"])
                    for r in chunks.document_chunks(indexed[name])]  # noqa: B023
        assert rows(fresh) == rows(original)
    vectors = {
        side: (chunks.table().search().where(f"document_id = '{indexed['kettle']}'")
               .select(["chunk_index", "vector"]).to_list())
        for side, chunks in (("fresh", fresh), ("original", original))}
    by_index = {side: np.array([r["vector"] for r in sorted(v, key=lambda r: r["chunk_index"])])
                for side, v in vectors.items()}
    assert np.allclose(by_index["fresh"], by_index["original"], atol=1e-5)

    # Search in the rebuilt directory finds what the original finds, within its owner only.
    hits = search_sync("how do I descale the kettle", owner_id="u1", limit=3, data_dir=rebuilt)
    assert hits and hits[0].document_id == indexed["kettle"]
    hits = search_sync("how do I descale the kettle", owner_id="u2", limit=3, data_dir=rebuilt)
    assert {h.document_id for h in hits} == {indexed["hose"]}


async def test_stray_chunks_go_and_changed_outcomes_are_recorded(
        module_nats: EmbeddedServer, mbus: Bus, indexed: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    stray = ChunkStore.open(data)
    stray.append([Row("ghost", "u1", "Ghost", 0, "", "A chunk of a document nobody uploaded.")],
                 np.ones((1, 384), dtype=np.float32) / np.sqrt(384))
    kettle = indexed["kettle"]
    logged = next(e for e in await doc_events(mbus, kettle) if isinstance(e, DocumentIndexed))
    assert logged.chunks > 1

    # With a one-chunk limit the kettle manual no longer fits: its failure is recorded.
    report = reindex(module_nats.url, data, VAGENT_KB_MAX_CHUNKS="1")
    assert report["removed"] == 1 and ChunkStore.open(data).count("document_id = 'ghost'") == 0
    assert kettle in report["failed"] and kettle in report["recorded"]
    assert indexed["broken"] not in report["recorded"]  # it failed before too
    failed = (await doc_events(mbus, kettle))[-1]
    assert isinstance(failed, DocumentFailed) and "too long" in failed.reason
    assert ChunkStore.open(data).document_chunks(kettle) == []

    # Back to the normal limit: indexed again, and the log says so.
    report = reindex(module_nats.url, data)
    assert report["indexed"][kettle] == logged.chunks and kettle in report["recorded"]
    again = (await doc_events(mbus, kettle))[-1]
    assert isinstance(again, DocumentIndexed) and again.chunks == logged.chunks


async def test_a_table_of_another_model_is_rebuilt(module_nats: EmbeddedServer, mbus: Bus,
                                                   indexed: dict[str, str], lance_data: Path,
                                                   tmp_path: Path) -> None:
    """Chunks embedded by another model (a table from before an upgrade: no layout recorded
    beside it) are replaced by the indexer when it starts, every one, and `vagent docs
    reindex` does the same and says so."""
    data = tmp_path / "data"
    old = ChunkStore.open(data)
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(2, 384)).astype(np.float32)
    old.append([Row(indexed["kettle"], "u1", "Kettle", 0, "", "How to descale the kettle."),
                Row("ghost", "u1", "Ghost", 0, "", "A chunk of a document nobody uploaded.")],
               vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    (old.path / LAYOUT_FILE).unlink()
    assert not store(data).current()

    host = ActorHost(mbus, ["indexer"], data_dir=data)
    await host.start()  # the rebuild runs beside the indexer's consumer
    try:
        async with asyncio.timeout(120):
            while not store(data).current():
                await asyncio.sleep(0.1)
    finally:
        await host.stop()
    original, rebuilt = store(lance_data), store(data)
    assert (rebuilt.path / LAYOUT_FILE).read_text().strip() == LAYOUT
    assert rebuilt.count("document_id = 'ghost'") == 0
    for name in ("kettle", "lamp", "hose"):
        assert len(rebuilt.document_chunks(indexed[name])) == len(original.document_chunks(indexed[name]))
    hits = search_sync("how do I descale the kettle", owner_id="u1", limit=3, data_dir=data)
    assert hits and hits[0].document_id == indexed["kettle"]

    (rebuilt.path / LAYOUT_FILE).unlink()
    report = reindex(module_nats.url, data)
    assert report["model_changed"] is True and report["removed"] == 0
    assert set(report["indexed"]) == {indexed[n] for n in ("kettle", "lamp", "hose")}
    assert ChunkStore.open(data).current()
    again = reindex(module_nats.url, data)
    assert again["model_changed"] is False
