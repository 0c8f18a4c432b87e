"""Documents → clean structured text: a list of blocks (headings and paragraphs).

Formats: text/plain, text/markdown, text/html (tags, scripts and styles stripped,
headings kept) and application/pdf (pypdf; text PDFs only, a scanned one has no text).
Anything else, an empty file or an unreadable one raises ParseError with a reason a
person can act on.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from domain.doctext import ParseError, decode_text

PLAIN, MARKDOWN, HTML, PDF = "text/plain", "text/markdown", "text/html", "application/pdf"
SUPPORTED = (PLAIN, MARKDOWN, HTML, PDF)
EXTENSIONS = {".txt": PLAIN, ".text": PLAIN, ".md": MARKDOWN, ".markdown": MARKDOWN,
              ".html": HTML, ".htm": HTML, ".pdf": PDF}
ALIASES = {"text/x-markdown": MARKDOWN, "application/xhtml+xml": HTML, "application/x-pdf": PDF}
GENERIC = {"", "application/octet-stream", "binary/octet-stream"}


@dataclass(frozen=True, slots=True)
class Block:
    text: str
    level: int = 0  # 1-6 for a heading, 0 for body text


def media_type(content_type: str | None, filename: str | None = None) -> str:
    """The format to parse as: the declared type, or the file name's extension when the
    type says nothing (application/octet-stream) or is a generic text type."""
    kind = (content_type or "").split(";")[0].strip().lower()
    kind = ALIASES.get(kind, kind)
    by_name = EXTENSIONS.get(PurePath(filename or "").suffix.lower(), "")
    if kind in GENERIC or (kind == PLAIN and by_name in (MARKDOWN,)):
        return by_name or kind
    return kind


def parse(data: bytes, content_type: str | None, filename: str | None = None) -> list[Block]:
    kind = media_type(content_type, filename)
    if kind not in SUPPORTED:
        raise ParseError(f"unsupported type {kind or 'unknown'!r}: "
                         "use text/plain, text/markdown, text/html or application/pdf")
    if not data:
        raise ParseError("empty file (0 bytes)")
    if kind == PDF:
        blocks = _pdf(data)
    else:
        text = decode_text(data)
        blocks = _markdown(text) if kind == MARKDOWN else _html(text) if kind == HTML else _plain(text)
    blocks = [b for b in blocks if b.text]
    if blocks and not any(b.level == 0 for b in blocks):
        blocks = [Block(b.text) for b in blocks]  # only short lines: they are the text
    if not blocks:
        raise ParseError("no text found in the document"
                         + (" (a scanned PDF has only images)" if kind == PDF else ""))
    return blocks


# --- text -------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str) -> str:
    """One paragraph: normalised Unicode, no control characters, single spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)  # words hyphenated across lines
    return _SPACES.sub(" ", text.replace("\n", " ")).strip()


def _is_heading_line(line: str) -> bool:
    line = line.strip()
    return 0 < len(line) <= 60 and line[-1] not in ".,;:!?-)" and not line[0].islower() \
        and len(line.split()) <= 10


def _plain(text: str) -> list[Block]:
    """Paragraphs are separated by blank lines; a short line without a final stop that
    opens a paragraph (or stands alone before one) is a heading, the first one a title."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[Block] = []
    for raw in re.split(r"\n\s*\n", text):
        lines = [line for line in raw.split("\n") if line.strip()]
        if not lines:
            continue
        if _is_heading_line(lines[0]):
            level = 1 if not blocks else 2
            blocks.append(Block(clean(lines[0]), level))
            lines = lines[1:]
        if lines:
            blocks.append(Block(clean("\n".join(lines))))
    return blocks


# --- markdown ---------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^(=+|-+)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def _inline_markdown(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: their alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])([*_])(?!\s)(.+?)(?<!\s)\1(?![\w*])", r"\2", text)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    return html.unescape(text)


def _markdown(text: str) -> list[Block]:
    blocks: list[Block] = []
    para: list[str] = []
    fenced = False

    def flush() -> None:
        if para:
            joined = clean(_inline_markdown("\n".join(para)))
            if joined:
                blocks.append(Block(joined))
            para.clear()

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            para.append(line)
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            blocks.append(Block(clean(_inline_markdown(heading.group(2))), len(heading.group(1))))
            continue
        if _SETEXT.match(line) and para and len(para) == 1 and i > 0 and lines[i - 1].strip():
            title = para.pop()
            flush()
            blocks.append(Block(clean(_inline_markdown(title)), 1 if line.strip()[0] == "=" else 2))
            continue
        stripped = line.strip()
        rule = re.fullmatch(r"[-*_]{3,}", stripped)
        table_rule = re.fullmatch(r"\|?[\s:|-]+\|?", stripped) and "-" in stripped
        if not stripped or rule or table_rule:
            flush()
            continue
        if _LIST.match(line) and para and not _LIST.match(para[0]):
            flush()
        if stripped.startswith(">"):
            stripped = stripped.lstrip("> ")
        if stripped.startswith("|"):
            stripped = " · ".join(c.strip() for c in stripped.strip("|").split("|"))
        # A list item stays one paragraph with its items, each ending like a sentence.
        if _LIST.match(line):
            item = _LIST.sub("", line).strip()
            stripped = item if item.endswith((".", "!", "?", ":", ";")) else item + "."
        para.append(stripped)
    flush()
    return blocks


# --- html -------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas",
         "nav", "footer", "form", "button", "select"}
_BREAK = {"p", "div", "br", "li", "tr", "table", "ul", "ol", "dl", "dt", "dd", "section",
          "article", "main", "header", "aside", "blockquote", "pre", "figure", "figcaption",
          "hr", "body", "html", "title"}
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.buffer: list[str] = []
        self.skip = 0
        self.level = 0

    def _flush(self) -> None:
        text = clean("".join(self.buffer))
        self.buffer.clear()
        if text:
            self.blocks.append(Block(text, self.level))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag in _HEADINGS:
            self._flush()
            self.level = _HEADINGS[tag]
        elif tag in _BREAK:
            self._flush()
        elif tag in ("td", "th"):
            self.buffer.append(" · " if self.buffer else "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BREAK:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _HEADINGS:
            self._flush()
            self.level = 0
        elif tag in _BREAK:
            if tag == "li" and self.buffer and not "".join(self.buffer).rstrip().endswith(
                    (".", "!", "?", ":", ";")):
                self.buffer.append(".")
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.buffer.append(data)


def _html(text: str) -> list[Block]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.blocks


# --- pdf --------------------------------------------------------------------------

def _pdf(data: bytes) -> list[Block]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken files warn on every object
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise ParseError("not a PDF file (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("the PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            AssertionError, OSError, RecursionError) as exc:
        raise ParseError(f"cannot read the PDF: {type(exc).__name__}: {exc}"[:300]) from None
    if not pages:
        raise ParseError("the PDF has no pages")
    blocks: list[Block] = []
    for page in pages:
        blocks.extend(_pdf_page(page))
    return blocks


def _pdf_page(text: str) -> list[Block]:
    """pypdf gives lines; rebuild paragraphs. A paragraph ends at a blank line or at a
    sentence end on a line clearly shorter than the page's lines; a short line without a
    final stop after a sentence's end and before a capital reads as a heading."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    widths = sorted(len(line) for line in lines if line)
    width = widths[int(len(widths) * 0.8)] if widths else 0
    blocks: list[Block] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(Block(clean("\n".join(para))))
            para.clear()

    for i, line in enumerate(lines):
        if not line:
            flush()
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if ((not para or para[-1][-1] in ".!?:") and len(line) < min(60, 0.7 * width)
                and line[-1] not in ".,;:!?-" and nxt[:1].isupper()):
            flush()
            blocks.append(Block(clean(line), 2))
            continue
        para.append(line)
        if line[-1] in ".!?:" and len(line) < 0.8 * width:
            flush()
    flush()
    return blocks
