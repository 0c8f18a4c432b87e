"""The knowledge base: parsing, chunking, embeddings, hybrid search (quality on a committed
corpus, isolation between owners, reads from another process) and `knowledge_search` as a
tool of the dialogue, end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from actors.runtime import ActorHost
from actors.tools.builtin import format_hits
from bus.blobs import put_document
from bus.client import Bus
from devservers.echo_llm import OpenAIServer
from projections.knowledge.chunk import MAX, OVERLAP, chunk, sentences
from projections.knowledge.embed import DIMS, embedder
from projections.knowledge.index import index_document
from projections.knowledge.parse import Block, ParseError, media_type, parse
from projections.knowledge.search import Hit, search
from projections.knowledge.store import ChunkStore, store
from projections.runtime import ProjectionService
from schemas import (
    AssistantCreated,
    AssistantMessage,
    AssistantSentence,
    DocumentIndexed,
    DocumentUploaded,
    SessionStarted,
    ToolCall,
    ToolResult,
    UserText,
    new_id,
)
from settings.config import parse as parse_config
from tests.conftest import wait_for
from tests.fixtures.pdf import make_pdf
from tests.test_dialogue import finals, providers_toml, servers, start

__all__ = ["servers", "start"]  # fixtures

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
CORPUS_ZH = Path(__file__).parent / "fixtures" / "corpus-zh"
QUESTIONS = json.loads((CORPUS / "questions.json").read_text())


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".md", ".txt", ".html", ".pdf")
                  and p.name != "README.md")


def title_of(path: Path) -> str:
    return path.stem.replace("-", " ").title()


def index_corpus(chunks: ChunkStore, owner: str, prefix: str = "",
                 files: list[Path] | None = None) -> dict[str, str]:
    """Every corpus file (or `files`) indexed for `owner`; document id → file name."""
    ids = {}
    for path in files or corpus_files():
        document_id = prefix + path.stem
        index_document(chunks, path.read_bytes(), document_id=document_id, owner_id=owner,
                       title=title_of(path), content_type=media_type(None, path.name),
                       filename=path.name)
        ids[document_id] = path.name
    return ids


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus indexed for user A, and three of its documents under other ids for B."""
    base = tmp_path_factory.mktemp("kb")
    chunks = store(base)
    index_corpus(chunks, "user-a", "a-")
    index_corpus(chunks, "user-b", "b-", corpus_files()[::4])
    return base


# --- parsing and chunking ----------------------------------------------------------

def test_formats_parse_to_clean_blocks() -> None:
    md = b"# Title\n\nSome **bold** and [a link](http://x) and `code`.\n\n## Part\n\n- one\n- two\n"
    assert parse(md, "text/markdown") == [
        Block("Title", 1), Block("Some bold and a link and code.", 0), Block("Part", 2),
        Block("one.", 0), Block("two.", 0)]
    html = (b"<html><head><title>T</title><style>p{}</style><script>x()</script></head><body>"
            b"<h2>Hello</h2><p>caf&eacute; &amp; tea</p><ul><li>a</li></ul></body></html>")
    assert parse(html, "text/html") == [Block("Hello", 2), Block("café & tea", 0), Block("a.", 0)]
    text = "Heading\nFirst line\nwrapped here.\n\nSecond paragraph.".encode("utf-16")
    assert parse(text, "text/plain") == [Block("Heading", 1), Block("First line wrapped here.", 0),
                                         Block("Second paragraph.", 0)]
    pdf = make_pdf(["Guide", "Line one of the body is long enough to look like running text. " * 3])
    blocks = parse(pdf, "application/pdf")
    assert blocks[0] == Block("Guide", 2) and "Line one of the body" in blocks[1].text
    assert parse("Ünïcödé ½\u00a0text".encode("cp1252"), "text/plain")[0].text == "Ünïcödé 1⁄2 text"


def test_types_and_unreadable_files() -> None:
    assert media_type("application/octet-stream", "a.PDF") == "application/pdf"
    assert media_type("text/plain", "notes.md") == "text/markdown"
    assert media_type("text/html; charset=utf-8", "x") == "text/html"
    for data, kind, reason in [
        (b"", "text/plain", "empty file"),
        (b"x", "image/png", "unsupported type 'image/png'"),
        (b"%PDF-1.4\nnot really", "application/pdf", "cannot read the PDF"),
        (b"GIF89a", "application/pdf", "not a PDF file"),
        (b"   \n\n  ", "text/plain", "no text found"),
    ]:
        with pytest.raises(ParseError, match=reason):
            parse(data, kind)


def test_chunks_follow_the_structure() -> None:
    long_section = " ".join(f"Sentence {i} describes step {i} of the procedure in some detail."
                            for i in range(40))
    blocks = [Block("Manual", 1), Block("Intro text."), Block("Setup", 2), Block(long_section),
              Block("Wi-Fi", 3), Block("Join the network."), Block("Care", 2), Block("Wipe it.")]
    chunks = chunk(blocks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    headings = [c.heading for c in chunks]
    assert headings[0] == "Manual" and headings[-1] == "Manual › Care"
    assert "Manual › Setup › Wi-Fi" in headings
    setup = [c for c in chunks if c.heading == "Manual › Setup"]
    assert len(setup) >= 3  # ~2,600 characters cut into 500-800
    for c in setup:
        assert len(c.text) <= MAX
        assert c.text.startswith("Sentence ") and c.text.endswith("detail.")  # whole sentences
    for before, after in itertools.pairwise(setup):
        first = sentences(after.text)[0]
        repeated = before.text[before.text.index(first):]  # overlap: the end of the previous one
        assert after.text.startswith(repeated) and 0 < len(repeated) <= OVERLAP
    covered = " ".join(c.text for c in setup)
    assert all(f"Sentence {i} " in covered for i in range(40))


def test_sentences_are_split_sensibly() -> None:
    assert sentences("It costs 3.5 euros. Then e.g. more. 第一句。第二句！") == [
        "It costs 3.5 euros.", "Then e.g. more.", "第一句。", "第二句！"]
    long = "word " * 400
    assert all(len(s) <= MAX for s in sentences(long))


def test_embeddings_are_normalised_and_meaningful() -> None:
    passages = ["Hold the reset button of the router for ten seconds.",
                "Oil the bicycle chain after rain.",
                "按住路由器的复位键十秒钟。", "下雨后给自行车链条上油。"]
    vectors = embedder().embed(passages)
    assert vectors.shape == (4, DIMS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for question in ("How do I reset the router?", "路由器怎么重置？"):
        query = embedder().embed_query(question)
        assert query.shape == (DIMS,) and abs(np.linalg.norm(query) - 1.0) < 1e-5
        # In either language, the router passage before the bicycle passage.
        scores = vectors @ query
        assert scores[0] > scores[1] + 0.03 and scores[2] > scores[3] + 0.03, scores
    # A batch embeds each passage as it would alone.
    assert np.allclose(embedder().embed(passages[1:2])[0], vectors[1], atol=1e-4)


# --- search -------------------------------------------------------------------------

async def test_the_right_document_is_in_the_top_three(corpus_dir: Path) -> None:
    found = 0
    misses = []
    for item in QUESTIONS:
        hits = await search(item["question"], owner_id="user-a", limit=3, data_dir=corpus_dir)
        names = [h.document_id for h in hits]
        if "a-" + Path(item["document"]).stem in names:
            found += 1
        else:
            misses.append((item["question"], names))
    assert found >= 9, misses
    assert len(QUESTIONS) == 10 and len(corpus_files()) == 10


async def test_hits_carry_their_document(corpus_dir: Path) -> None:
    hits = await search("factory reset with a paperclip", owner_id="user-a", data_dir=corpus_dir)
    assert 0 < len(hits) <= 5 and isinstance(hits[0], Hit)
    top = hits[0]
    assert (top.document_id, top.title) == ("a-nimbus-router", "Nimbus Router")
    assert "paperclip" in top.text and top.heading and top.heading.endswith("Factory reset")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert format_hits(hits[:1]).startswith("[Nimbus Router] (Factory reset) A factory reset")


async def test_one_owner_never_sees_another_owners_chunks(corpus_dir: Path) -> None:
    for item in QUESTIONS:
        hits = await search(item["question"], owner_id="user-b", limit=10, data_dir=corpus_dir)
        assert hits and all(h.document_id.startswith("b-") for h in hits)
    # Naming A's documents does not help B.
    a_docs = ["a-" + p.stem for p in corpus_files()]
    assert await search("router reset", owner_id="user-b", document_ids=a_docs,
                        data_dir=corpus_dir) == []
    assert await search("router reset", owner_id=None, data_dir=corpus_dir) == []
    assert await search("router reset", owner_id="nobody", data_dir=corpus_dir) == []
    assert await search("router reset", owner_id="user-a'; --", data_dir=corpus_dir) == []
    # A's knowledge base narrowed to two documents.
    hits = await search("router reset", owner_id="user-a", limit=10,
                        document_ids=["a-aurora-dishwasher", "a-harbor-kayak"], data_dir=corpus_dir)
    assert hits and {h.document_id for h in hits} <= {"a-aurora-dishwasher", "a-harbor-kayak"}
    assert await search("router", owner_id="user-a", document_ids=[], data_dir=corpus_dir) == []
    assert await search("   ", owner_id="user-a", data_dir=corpus_dir) == []


async def test_a_large_table_searches_through_its_vector_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past VECTOR_INDEX_AT rows the table gets an approximate vector index; scopes of at
    least EXACT_BELOW rows search through it, smaller ones scan exactly. Both find the right
    documents and stay within their owner (thresholds lowered: the real ones are 50k/20k)."""
    import projections.knowledge.search as search_module
    import projections.knowledge.store as store_module

    monkeypatch.setattr(store_module, "VECTOR_INDEX_AT", 3000)
    monkeypatch.setattr(search_module, "EXACT_BELOW", 2000)
    chunks = store(tmp_path)
    index_corpus(chunks, "user-c", "c-")
    index_corpus(chunks, "user-d", "d-", corpus_files()[:3])
    rng = np.random.default_rng(3)
    filler = rng.normal(size=(3000, DIMS)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    chunks.append([store_module.Row(f"c-filler{i // 50}", "user-c", "Filler", i % 50, "",
                                    f"Filler passage number {i} about nothing in particular.")
                   for i in range(len(filler))], filler)
    assert not chunks.has_vector_index()
    chunks.optimize()
    assert chunks.has_vector_index() and chunks.count("owner_id = 'user-c'") >= 3000

    def plan(owner: str) -> str:
        where = search_module.scope(owner, None)
        return search_module.nearest_query(chunks, chunks.table(), filler[0], where, 20).explain_plan(True)

    assert "ANN" in plan("user-c") and "ANN" not in plan("user-d")
    found = 0
    for item in QUESTIONS:  # through the index
        hits = await search(item["question"], owner_id="user-c", limit=3, data_dir=tmp_path)
        found += "c-" + Path(item["document"]).stem in [h.document_id for h in hits]
        assert all(h.document_id.startswith("c-") for h in hits)
    assert found >= 9
    for path in corpus_files()[:3]:  # user-d's few chunks: an exact scan
        hits = await search(path.stem.replace("-", " "), owner_id="user-d", limit=5, data_dir=tmp_path)
        assert hits and all(h.document_id.startswith("d-") for h in hits)


async def test_search_before_anything_was_indexed(tmp_path: Path) -> None:
    assert await search("anything", owner_id="u", data_dir=tmp_path) == []


def test_another_process_sees_new_chunks(tmp_path: Path) -> None:
    """The edge searches while the indexer writes: each query sees the latest commit."""
    chunks = ChunkStore.open(tmp_path)
    script = ("import asyncio, sys; from pathlib import Path; "
              "from projections.knowledge.search import search; "
              "print(','.join(h.document_id for h in asyncio.run(search("
              "sys.argv[1], owner_id='u', data_dir=Path(sys.argv[2])))))")
    reader = ChunkStore.open(tmp_path)  # a second connection, as another process holds

    def index(did: str, text: str) -> None:
        index_document(chunks, text.encode(), document_id=did, owner_id="u", title=did,
                       content_type="text/plain")

    index("espresso", "Descale the espresso machine every two months.")
    assert reader.count() == 1
    index("kayak", "Inflate the kayak floor to 0.4 bar.")
    assert reader.count() == 2  # the same open connection sees the new commit
    out = subprocess.run([sys.executable, "-c", script, "kayak floor pressure", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().split(",")[0] == "kayak"
    assert "WARN" not in out.stderr


# --- knowledge_search through the dialogue ----------------------------------------------

@pytest.fixture
async def projections(bus: Bus, data_dir: Path) -> AsyncIterator[ProjectionService]:
    service = ProjectionService(bus, data_dir)
    await service.start()
    yield service
    await service.stop()


async def wait_indexed(bus: Bus, document_id: str) -> DocumentIndexed:
    from bus.log import load

    async with asyncio.timeout(60):
        while True:
            entries, _ = await load(bus, "doc", document_id)
            for entry in entries:
                if isinstance(entry.event, DocumentIndexed):
                    return entry.event
                assert entry.event is None or entry.event.type != "document.failed", entry.event
            await asyncio.sleep(0.05)


async def test_an_assistant_with_documents_looks_the_question_up_and_cites_the_title(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer],
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService, data_dir: Path) -> None:
    llm, _ = servers
    question = "how often should the dishwasher filter be cleaned"
    llm.tool_arguments["knowledge_search"] = json.dumps({"query": "router password"})
    config = parse_config(providers_toml(llm))  # default builtins
    monkeypatch.setattr("actors.indexer.Indexer.name", "indexer_" + new_id())
    await start("indexer", "tools", "dialogue", config=config, data_dir=data_dir)

    owner, other = "kb-owner-" + new_id(), "kb-other-" + new_id()
    uploads = []
    for path, who in [(CORPUS / "aurora-dishwasher.md", owner), (CORPUS / "nimbus-router.html", owner),
                      (CORPUS / "zenith-robot-vacuum.md", owner), (CORPUS / "aurora-dishwasher.md", other)]:
        did = "doc" + new_id()
        await put_document(bus, did, path.read_bytes())
        title = "Theirs: " + title_of(path) if who == other else title_of(path)
        uploads.append(DocumentUploaded(document_id=did, owner_id=who, title=title,
                                        filename=path.name, content_type=media_type(None, path.name),
                                        object_name=did))
        await bus.publish(uploads[-1])
    for doc in uploads:
        await wait_indexed(bus, doc.document_id)
    dishwasher, router, _vacuum, _theirs = uploads

    with_docs, without = new_id(), new_id()
    await bus.publish(AssistantCreated(assistant_id=with_docs, owner_id=owner, name="Helper",
                                       persona="You answer from the manuals.",
                                       documents=[dishwasher.document_id, router.document_id]))
    await bus.publish(AssistantCreated(assistant_id=without, owner_id=owner, name="Plain",
                                       persona="You chat."))

    # A plain question (the model calls no tool): its answer is looked up before the model's
    # first step, as a call and result of the search tool in the log.
    s = "kb" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=with_docs))
    await bus.publish(UserText(session_id=s, text=f"{question}?"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)), timeout=60)
    types = [e.type for e in events]
    assert types[2:7] == ["turn.started", "assistant.message", "tool.call", "tool.result",
                          "assistant.sentence"] and types[-1] == "assistant.message", types
    step = next(e for e in events if isinstance(e, AssistantMessage))
    assert step.provider == "vagent" and [c.name for c in step.tool_calls] == ["knowledge_search"]
    call = next(e for e in events if isinstance(e, ToolCall))
    assert json.loads(call.arguments) == {"query": f"{question}?"} and call.route == "tools"
    result = next(e for e in events if isinstance(e, ToolResult))
    assert not result.is_error and result.name == "knowledge_search"
    assert result.content.startswith("[Aurora Dishwasher] (Cleaning the filter)"), result.content
    assert "once a month" in result.content
    assert "Theirs" not in result.content and "Zenith" not in result.content  # other owner, not in KB
    first = llm.requests[0]  # the model's first request already holds the passages …
    assert first["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id,
                                     "content": result.content}
    assert first["messages"][-3] == {"role": "user", "content": f"{question}?"}
    assert "knowledge_search" in [t["function"]["name"] for t in first["tools"]]  # … and may search on
    assert finals(events)[-1].text.startswith("The tool said: [Aurora Dishwasher]")
    final = finals(events)[-1]
    assert final.ttft_ms is not None and final.ttft_ms > step.total_ms  # timed from the turn's start

    # The model may still search on its own, after the look-up.
    llm.follow_ups = ["knowledge_search"]
    await bus.publish(UserText(session_id=s, text="and the router?"))
    events = await wait_for(bus, s, lambda ev: len(finals(ev)) == 2, timeout=60)
    searched = [e for e in events if isinstance(e, ToolCall)][1:]
    assert [json.loads(e.arguments)["query"] for e in searched] == ["and the router?", "router password"]
    assert [e.is_error for e in events if isinstance(e, ToolResult)] == [False] * 3

    # An assistant without documents is not offered the tool, though it is in the catalog.
    s2 = "kb" + new_id()
    await bus.publish(SessionStarted(session_id=s2, assistant_id=without))
    await bus.publish(UserText(session_id=s2, text="use knowledge_search: dishwasher filter"))
    events = await wait_for(bus, s2, lambda ev: bool(finals(ev)), timeout=60)
    assert not any(isinstance(e, ToolCall | ToolResult) for e in events)  # nor is anything looked up
    assert finals(events)[-1].text.startswith("You said:")
    offered = [t["function"]["name"] for t in llm.requests[-1].get("tools", [])]
    assert "knowledge_search" not in offered and "get_time" in offered


async def test_a_mandarin_assistant_answers_a_chinese_question_from_its_chinese_manual(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer],
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService, data_dir: Path) -> None:
    llm, _ = servers
    config = parse_config(providers_toml(llm))
    monkeypatch.setattr("actors.indexer.Indexer.name", "indexer_" + new_id())
    await start("indexer", "tools", "dialogue", config=config, data_dir=data_dir)
    owner = "kb-zh-" + new_id()
    uploads = []
    for path, title in [(CORPUS_ZH / "air-purifier.md", "清风空气净化器手册"),
                        (CORPUS_ZH / "water-heater.md", "暖泉电热水器说明"),
                        (CORPUS / "aurora-dishwasher.md", title_of(CORPUS / "aurora-dishwasher.md"))]:
        did = "doc" + new_id()
        await put_document(bus, did, path.read_bytes())
        uploads.append(DocumentUploaded(document_id=did, owner_id=owner, title=title,
                                        filename=path.name, content_type="text/markdown",
                                        object_name=did))
        await bus.publish(uploads[-1])
    for doc in uploads:
        await wait_indexed(bus, doc.document_id)
    helper = new_id()
    await bus.publish(AssistantCreated(assistant_id=helper, owner_id=owner, name="小助手",
                                       language="zh", documents=[d.document_id for d in uploads]))
    s = "kbzh" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=helper))
    await bus.publish(UserText(session_id=s, text="空气净化器的滤网多久要换一次？"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)), timeout=60)
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.content.startswith("[清风空气净化器手册]"), result.content
    assert "六个月" in result.content.split("\n\n")[0]  # the passage that answers it comes first
    assert "[清风空气净化器手册]" in finals(events)[-1].text  # the answer cites the manual's title
    assert any(isinstance(e, AssistantSentence) for e in events)


# --- the benchmark ------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_rag_runs_with_tiny_sizes() -> None:
    """`vagent bench rag` end to end on its own embedded server; figures are reported,
    never asserted."""
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "rag", "--index-chunks", "10",
         "--chunks", "300", "--queries", "5", "--events", "300"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine") and "chunks/s" in lines[1]
    assert lines[2].startswith("search 300") and "hybrid p50" in lines[2]
    assert "(one owner's 300 chunks)" in lines[2]
    assert "events/s" in lines[3] and "caught up with 300 " in lines[3]
    assert lines[4].startswith("retrieval") and "English " in lines[4] and "Chinese " in lines[4]
