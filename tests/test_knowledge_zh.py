"""The knowledge base in Chinese: Chinese documents found by Chinese questions (hybrid search
over a real LanceDB table and the real embedding model), the full-text index segmenting
Chinese words, Chinese text chunked at its sentence ends, and a table made with another
embedding model searched by its words until it is rebuilt."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from projections.knowledge.chunk import MAX, OVERLAP, chunk, sentences
from projections.knowledge.parse import Block
from projections.knowledge.search import _fts, scope, search
from projections.knowledge.store import LAYOUT_FILE, ChunkStore, store
from tests.test_knowledge import QUESTIONS, corpus_files, index_corpus

CORPUS_ZH = Path(__file__).parent / "fixtures" / "corpus-zh"
QUESTIONS_ZH = json.loads((CORPUS_ZH / "questions.json").read_text())
TITLES = {"rice-cooker": "禾香电饭煲说明书", "air-purifier": "清风空气净化器手册",
          "annual-leave-policy": "员工年假与请假制度", "water-heater": "暖泉电热水器说明",
          "expense-policy": "差旅费用报销制度"}


def zh_files() -> list[Path]:
    return sorted(p for p in CORPUS_ZH.glob("*.md") if p.name != "README.md")


def index_zh(chunks: ChunkStore, owner: str) -> None:
    from projections.knowledge.index import index_document

    for path in zh_files():
        index_document(chunks, path.read_bytes(), document_id=path.stem, owner_id=owner,
                       title=TITLES[path.stem], content_type="text/markdown", filename=path.name)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The English corpus and the Chinese one, in one table, for one owner."""
    base = tmp_path_factory.mktemp("kb-zh")
    chunks = store(base)
    index_corpus(chunks, "user-m")
    index_zh(chunks, "user-m")
    return base


async def test_each_chinese_question_finds_its_document_first(mixed_dir: Path) -> None:
    assert len(QUESTIONS_ZH) == 10 and len(zh_files()) == 5
    wrong = []
    for item in QUESTIONS_ZH:
        hits = await search(item["question"], owner_id="user-m", limit=3, data_dir=mixed_dir)
        if not hits or hits[0].document_id != Path(item["document"]).stem:
            wrong.append((item["question"], [h.document_id for h in hits]))
    assert wrong == []
    hits = await search("空气净化器的过滤网多久换一次？", owner_id="user-m", limit=1, data_dir=mixed_dir)
    assert hits[0].title == "清风空气净化器手册" and "六个月" in hits[0].text
    assert hits[0].heading and hits[0].heading.endswith("更换滤网")


async def test_english_questions_still_find_theirs_beside_chinese_documents(mixed_dir: Path) -> None:
    found = 0
    for item in QUESTIONS:
        hits = await search(item["question"], owner_id="user-m", limit=3, data_dir=mixed_dir)
        found += Path(item["document"]).stem in [h.document_id for h in hits]
        assert hits and hits[0].document_id not in TITLES  # never a Chinese document first
    assert found >= 9 and len(corpus_files()) == 10


def test_the_full_text_index_segments_chinese_words(mixed_dir: Path) -> None:
    """Words inside unspaced Chinese text are terms of the index: a word of a sentence finds
    it, and a whole question finds the document that shares its words."""
    table = store(mixed_dir).table()
    where = scope("user-m", None)

    def first(query: str) -> str:
        rows = _fts(table, query, where, 5)
        assert rows, query
        return str(rows[0]["document_id"])

    assert first("滤网") == "air-purifier"  # inside "更换滤网" and "取出旧滤网"
    assert first("镁棒") == "water-heater"
    assert first("陪产假") == "annual-leave-policy"
    assert first("高铁二等座") == "expense-policy"
    assert first("内胆 不粘涂层") == "rice-cooker"
    assert first("paperclip factory reset") == "nimbus-router"


def test_chinese_text_is_cut_at_its_sentence_ends() -> None:
    assert sentences("他说：“明天见。”然后走了。真的吗？是的！") == [
        "他说：“明天见。”", "然后走了。", "真的吗？", "是的！"]
    clause = "这是一个没有句号的很长的句子，"
    parts = sentences(clause * 100)  # no sentence end at all: cut after a comma
    assert all(len(p) <= MAX for p in parts) and all(p.endswith("，") for p in parts[:-1])
    assert "".join(parts) == clause * 100

    paragraph = "".join(f"第{i}条：每一句话都以句号结束。" for i in range(120))
    pieces = chunk([Block("说明", level=1), Block(paragraph)])
    assert len(pieces) > 1 and all(p.heading == "说明" for p in pieces)
    for previous, piece in itertools.pairwise(pieces):
        assert len(piece.text) <= MAX + OVERLAP and piece.text.endswith("。")
        assert " " not in piece.text  # Chinese sentences are joined without spaces
        # The overlap: the chunk starts with sentences that ended the previous one.
        assert sentences(piece.text)[0] in sentences(previous.text)[1:]
    assert "".join(sentences(pieces[0].text)).startswith("第0条：")


async def test_a_table_of_another_model_is_searched_by_its_words(tmp_path: Path) -> None:
    """Rows embedded by another model cannot be compared with this model's query vectors:
    until the table is rebuilt, searches use the full-text index alone."""
    chunks = store(tmp_path)
    index_zh(chunks, "u")
    assert chunks.current()
    (chunks.path / LAYOUT_FILE).unlink()  # as a table made before the layout was recorded
    assert not chunks.current()
    hits = await search("镁棒多久换一次", owner_id="u", data_dir=tmp_path)
    assert hits and hits[0].document_id == "water-heater"
    chunks.clear()
    assert chunks.count() == 0 and chunks.table().list_indices() == []
    assert await search("镁棒多久换一次", owner_id="u", data_dir=tmp_path) == []
