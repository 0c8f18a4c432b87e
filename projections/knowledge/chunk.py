"""Blocks → chunks by structure: a chunk never spans two sections (headings), prefers to end
at a paragraph, never cuts a sentence (unless one sentence alone is too long), and the
next chunk of the same section starts with the previous one's last sentence (overlap)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain.doctext import CHUNK_MAX
from projections.knowledge.parse import Block

TARGET = 500  # a chunk may end at a paragraph once this long…
MAX = CHUNK_MAX  # …and always ends before growing past this
OVERLAP = 200  # at most this many characters of the previous chunk's end repeat


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    heading: str  # the section's heading path, "Setup › Wi-Fi"; "" before any heading
    text: str


_SENTENCE_END = re.compile(
    r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-Ý\u3040-\u30ff\u4e00-\u9fff])"  # a stop,
    # a space, a capital (or a CJK character)
    # CJK: no spaces; a closing quote or bracket stays with its sentence.
    r"|(?<=[。！？；])(?![”’」』）】])|(?<=[。！？；][”’」』）】])")
_CJK_STOPS = frozenset("。！？；”’」』）】")
# Where an overlong "sentence" is best cut: a space, or a CJK comma or enumeration mark.
_SOFT_BREAK = re.compile(r"[ ，、,：]")


def sentences(paragraph: str) -> list[str]:
    parts = [s.strip() for s in _SENTENCE_END.split(paragraph)]
    out: list[str] = []
    for part in parts:
        if not part:
            continue
        while len(part) > MAX:  # one very long "sentence" (a table row, a URL list): cut at a space
            breaks = [m.end() for m in _SOFT_BREAK.finditer(part, 0, MAX)]
            cut = breaks[-1] if breaks and breaks[-1] > MAX // 2 else MAX
            out.append(part[:cut].strip())
            part = part[cut:].strip()
        if part:
            out.append(part)
    return out


def sections(blocks: list[Block]) -> list[tuple[str, list[str]]]:
    """(heading path, paragraphs) in document order; headings with no text of their own
    only name the sections below them."""
    stack: list[tuple[int, str]] = []
    out: list[tuple[str, list[str]]] = []
    for block in blocks:
        if block.level:
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.text))
            continue
        path = " › ".join(text for _, text in stack)
        if out and out[-1][0] == path:
            out[-1][1].append(block.text)
        else:
            out.append((path, [block.text]))
    return out


def chunk(blocks: list[Block]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for heading, paragraphs in sections(blocks):
        for text in _pack(paragraphs):
            chunks.append(Chunk(len(chunks), heading, text))
    return chunks


def _pack(paragraphs: list[str]) -> list[str]:
    """Sentences packed greedily; paragraphs joined by a newline, sentences by a space."""
    out: list[str] = []
    current: list[tuple[str, bool]] = []  # (sentence, starts a paragraph)
    size = 0
    fresh = 0  # sentences in `current` that are not overlap

    def render(items: list[tuple[str, bool]]) -> str:
        text = ""
        for i, (sentence, new_para) in enumerate(items):
            if i:  # Chinese and Japanese sentences follow each other without a space
                text += "\n" if new_para else "" if text[-1] in _CJK_STOPS else " "
            text += sentence
        return text

    def emit() -> None:
        nonlocal current, size, fresh
        if fresh:
            out.append(render(current))
        tail: list[tuple[str, bool]] = []
        length = 0
        for sentence, new_para in reversed(current):
            if length + len(sentence) > OVERLAP:
                break
            tail.insert(0, (sentence, new_para))
            length += len(sentence) + 1
        current, size, fresh = tail, length, 0

    for paragraph in paragraphs:
        items = sentences(paragraph)
        if fresh and size >= TARGET:
            emit()  # a good place to end: a paragraph boundary
        for n, sentence in enumerate(items):
            if current and size + len(sentence) + 1 > MAX:
                emit()
                if size + len(sentence) + 1 > MAX:  # the overlap does not fit with it
                    current, size = [], 0
            current.append((sentence, n == 0))
            size += len(sentence) + (1 if len(current) > 1 else 0)
            fresh += 1
    if fresh:
        out.append(render(current))
    return out
