"""Cutting a streamed LLM answer into sentences, so speech can start before the answer ends.

Each `Sentence` carries two texts: `display`, as the model wrote it (markdown, emoji), and
`spoken`, what TTS should say (markdown marks, code blocks and emoji removed).

Boundaries:

- after `. ! ? ;` followed by white space (or a CJK character), and after `。！？；` at once;
  closing quotes, brackets and emphasis marks that follow stay with the sentence;
- at every newline outside a code block: chat models do not hard-wrap prose, so a newline
  ends a paragraph, a list item or a heading;
- for the first sentence only, at a clause comma (`，`, or `,` before a space) once the
  sentence has `first_clause_chars` spoken characters, so the first audio comes sooner.

Not boundaries: numbers (3.14, 1,000, $4.99, v1.2.3), URLs and e-mail addresses (no space
after their dots), common abbreviations (Mr. Dr. e.g. U.S. …), initials (J. K.), list
markers (`1. `), an ellipsis before a lower-case word, anything inside a ``` code block.

The result never depends on how the stream was chunked: a decision that needs a character
that has not arrived yet waits for it (or for `flush`). So a terminator at the end of what
has arrived is held: it may still become `3.14`, `!!` or `。”`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sentence:
    display: str  # as the model wrote it, trimmed
    spoken: str  # for TTS; never empty (sentences with nothing to say are skipped)


_CJK_TERMINATORS = frozenset("。！？；")
_TERMINATORS = frozenset(".!?;…") | _CJK_TERMINATORS
# Backticks are left out: "done.```" must still open a code block.
_CLOSERS = frozenset("\"')]}”’」』）】》〉*_~")
_TOKEN_STOP = frozenset("([{\"'“‘*_~「『（【《〈")

# Words that a period does not end. "no" and "etc" are decided by the next word instead.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "cf", "approx", "dept",
    "fig", "vol", "e.g", "i.e", "u.s", "u.k", "a.m", "p.m",
})
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # U.S.A, e.g, p.m


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x3000 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF
            or 0x20000 <= code <= 0x2FA1F)


class SentenceSplitter:
    """Feed an answer's deltas in order; get each sentence as soon as it is complete.

    `flush()` ends the stream, returns the rest and resets the splitter for reuse.
    """

    def __init__(self, first_clause_chars: int = 24) -> None:
        self.first_clause_chars = first_clause_chars
        self._reset()

    def _reset(self) -> None:
        # The whole answer is kept: decisions look back (line start, the word before a
        # period), and an answer is a few kilobytes at most.
        self._text = ""
        self._start = 0  # where the pending sentence starts
        self._pos = 0  # the next character to decide on
        self._spoke = False  # a sentence with spoken text has been returned

    def feed(self, delta: str) -> list[Sentence]:
        self._text += delta
        return self._scan(final=False)

    def flush(self) -> list[Sentence]:
        out = self._scan(final=True)
        self._cut(len(self._text), out)
        self._reset()
        return out

    def _scan(self, final: bool) -> list[Sentence]:
        out: list[Sentence] = []
        text = self._text
        n = len(text)
        while self._pos < n:
            i = self._pos
            char = text[i]
            if char == "`":
                if text.startswith("```", i):
                    close = text.find("```", i + 3)
                    newline = text.find("\n", i + 3)
                    if close < 0 and newline < 0 and not final:
                        break  # inline ```code``` or the start of a block: not known yet
                    # A block stands alone: what precedes it is said now, and the block,
                    # which has nothing to say, is skipped as a whole.
                    block = newline >= 0 and (close < 0 or newline < close)
                    if block and text[self._start:i].strip():
                        self._cut(i, out)
                    if close < 0 and not final:
                        break  # wait for the block's end
                    self._pos = n if close < 0 else close + 3
                    if block:
                        self._cut(self._pos, out)
                    continue
                if not final and n - i < 3 and text[i:] == "`" * (n - i):
                    break  # may be the start of a ``` fence
            elif char == "\n":
                self._cut(i + 1, out)
                continue
            elif char in _TERMINATORS:
                end = self._run_end(i)
                cut = self._ends_sentence(i, end, final)
                if cut is None:
                    break
                if cut:
                    self._cut(end, out)
                else:
                    self._pos = end
                continue
            elif char in ",，" and not self._spoke and self._clause_long_enough(i):
                if char == "，":
                    self._cut(i + 1, out)
                    continue
                if i + 1 >= n and not final:
                    break
                if i + 1 < n and text[i + 1].isspace():
                    self._cut(i + 1, out)
                    continue
            self._pos = i + 1
        return out

    def _run_end(self, i: int) -> int:
        text, n = self._text, len(self._text)
        while i < n and text[i] in _TERMINATORS:
            i += 1
        while i < n and text[i] in _CLOSERS:
            i += 1
        return i

    def _ends_sentence(self, i: int, end: int, final: bool) -> bool | None:
        """Whether the run of terminators (and closers) text[i:end] ends a sentence;
        None when that depends on characters that have not arrived."""
        text, n = self._text, len(self._text)
        if end >= n:
            return True if final else None
        run = text[i:end]
        if any(c in _CJK_TERMINATORS for c in run):
            return True
        following = text[end]
        if not (following.isspace() or _is_cjk(following)):
            return False  # 3.14, example.com, a.b@c.d, ?x=1
        marks = run.rstrip("".join(_CLOSERS))
        if set(marks) - {".", "…"}:
            return True  # ! ? ;
        if len(marks) > 1 or "…" in marks:
            # An ellipsis is a pause inside a sentence unless a new sentence starts after it.
            if _is_cjk(following):
                return False
            return self._next_word_test(end, final, str.isupper)
        word = self._word_before(i)
        lower = word.lower()
        if lower in _ABBREVIATIONS or _DOTTED.fullmatch(word) or (len(word) == 1 and word.isupper()):
            return False
        if word.isdigit() and len(word) <= 3 and not text[self._line_start(i):i - len(word)].strip():
            return False  # a list marker: "2. Step two"
        if lower == "no":
            return self._next_word_test(end, final, lambda c: not c.isdigit())  # "No. 5"
        if lower == "etc":
            return self._next_word_test(end, final, lambda c: c.isupper() or _is_cjk(c))
        return True

    def _next_word_test(self, end: int, final: bool,
                        starts_sentence: Callable[[str], bool]) -> bool | None:
        """Apply `starts_sentence` to the first character of the next word. A newline
        before it cuts anyway, so the period need not."""
        text, n = self._text, len(self._text)
        k = end
        while k < n and text[k].isspace():
            if text[k] == "\n":
                return False
            k += 1
        if k >= n:
            return True if final else None
        return starts_sentence(text[k])

    def _word_before(self, i: int) -> str:
        text = self._text
        k = i
        while k > 0 and not text[k - 1].isspace() and text[k - 1] not in _TOKEN_STOP \
                and not _is_cjk(text[k - 1]):
            k -= 1
        return text[k:i]

    def _line_start(self, i: int) -> int:
        return self._text.rfind("\n", 0, i) + 1

    def _clause_long_enough(self, i: int) -> bool:
        return len(to_spoken(self._text[self._start:i])) >= self.first_clause_chars

    def _cut(self, end: int, out: list[Sentence]) -> None:
        chunk = self._text[self._start:end]
        self._start = self._pos = end
        spoken = to_spoken(chunk)
        if spoken:
            out.append(Sentence(display=chunk.strip(), spoken=spoken))
            self._spoke = True


_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_INLINE_CODE = re.compile(r"`([^`]*)`")
_STRONG = re.compile(r"(\*\*|__)(.+?)\1")
_STRIKE = re.compile(r"~~(.+?)~~")
_EM_STAR = re.compile(r"(?<![\w*])\*(?![\s*])([^*\n]+?)(?<!\s)\*(?![\w*])")
_EM_UNDERSCORE = re.compile(r"(?<![\w_])_(?![\s_])([^_\n]+?)(?<!\s)_(?![\w_])")
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.M)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+|$)", re.M)
_QUOTE = re.compile(r"^[ \t]*>[ \t]?", re.M)
_BULLET = re.compile(r"^[ \t]*[-*+•][ \t]+", re.M)
_TABLE_RULE = re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*(?::?-+:?)?[ \t]*$", re.M)
# Emphasis marks left unpaired when a sentence boundary fell inside **bold** text.
_STRAY_MARKS = re.compile(r"(?:(?<=\s)|^)(?:\*+|_{2,}|~~)(?=\S)|(?<=\S)(?:\*+|_{2,}|~~)(?=\s|$)")
_EMOJI = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # pictographs, emoticons, transport, flags' letters, skin tones
    "\u2600-\u27BF"  # misc symbols and dingbats (☀ ✅ ❤)
    "\u2300-\u23FF"  # misc technical (⌚ ⏰ ⏩)
    "\u2B00-\u2BFF"  # ⭐ ⬆ ⭕
    "\uFE0E\uFE0F\u200D\u20E3"  # variation selectors, zero-width joiner, keycap
    "\U000E0020-\U000E007F"  # tag characters (subdivision flags)
    "]"
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:，。！？；：、])")


def to_spoken(text: str) -> str:
    """What TTS should say for `text`: markdown marks removed, links reduced to their
    text, code blocks dropped, emoji removed, white space collapsed. "" when nothing
    speakable (no letter or digit) is left."""
    text = _FENCE.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _RULE.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _table_cells(text)
    text = _STRONG.sub(r"\2", text)
    text = _STRIKE.sub(r"\1", text)
    text = _EM_STAR.sub(r"\1", text)
    text = _EM_UNDERSCORE.sub(r"\1", text)
    text = _STRAY_MARKS.sub("", text)
    text = _EMOJI.sub(" ", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text if any(c.isalnum() for c in text) else ""


def code_spoken(text: str) -> str:
    """What TTS should say for an answer that is nothing but code ("```17 * 23 = 391```"):
    the code itself, read as plain text, rather than silence. "" when it has no code either."""
    blocks = [block.split("\n", 1)[1] if "\n" in block else block
              for block in re.findall(r"```(.*?)(?:```|\Z)", text, re.S)]
    return to_spoken(" ".join(blocks))


def _table_cells(text: str) -> str:
    # A table row is read as its cells in a list: "| a | b |" → "a, b".
    lines = []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 1:
            cells = [cell.strip() for cell in stripped[1:-1].split("|")]
            line = ", ".join(cell for cell in cells if cell)
        lines.append(line)
    return "\n".join(lines)


# --- pieces for a synthesizer ------------------------------------------------------------
#
# A synthesizer's memory and time grow with the length of what it is given in one call
# (Piper's decoder holds ~20 MB per second of audio it makes, measured), and nothing can be
# spoken or interleaved with other sessions until a call ends. So every text is cut into
# pieces of at most `max_chars` before synthesis, whatever produced it: a sentence the
# splitter above let through whole (no punctuation), a greeting, a goodbye.

# Control characters make synthesizers fail (Piper's espeak: "embedded null character") or
# spell them out. Format characters (zero-width space, bidi overrides, BOM, soft hyphen)
# are invisible and unspoken; the joiners stay, they shape emoji and some scripts.
_JOINERS = frozenset("\u200c\u200d")
_UNSPEAKABLE = frozenset({"Cc", "Cf", "Cs", "Co"})
_CLINGING = _JOINERS | frozenset("\ufe0e\ufe0f")
_SPEECH_END = re.compile(
    "[.!?;…]+[" + re.escape("".join(_CLOSERS)) + "]*(?=\\s|$)"  # a Latin sentence end
    "|[。！？；]+[" + re.escape("".join(_CLOSERS)) + "]*"  # a CJK one needs no space after
    "|\n")
# A clause ends after a comma, colon or dash; "1,000" and "10:30" keep theirs.
_CLAUSE_END = re.compile(r"[，、：—–]+|[,:](?=\s)")
_SPACE = re.compile(r"\s+")


def speakable(text: str) -> str:
    """`text` without control, format and private-use characters (a tab or carriage return
    becomes a space, a newline stays), trimmed. Nothing else changes: for ordinary text this
    is `text.strip()`."""
    if text.isprintable():  # the common case: one scan in C, nothing to remove
        return text.strip()
    out = []
    for char in text:
        if char == "\n" or char in _JOINERS or unicodedata.category(char) not in _UNSPEAKABLE:
            out.append(char)
        elif char.isspace():
            out.append(" ")
    return "".join(out).strip()


def cut(text: str, max_chars: int) -> list[str]:
    """`speakable(text)` in pieces of at most `max_chars` characters, cut where a reader would
    pause: at sentence ends, else at clause ends (commas, colons, dashes), else between
    words; a run without any (a long "wwww…", Chinese without punctuation) by length.
    Neighbouring sentences (clauses, words) are packed into one piece while they fit.
    A text that fits is one piece, itself."""
    text = speakable(text)
    if len(text) <= max_chars:
        return [text] if text else []
    return [text[a:b] for a, b in _spans(text, 0, len(text), max(1, max_chars), 0)]


def clip(text: str, limit: int, max_chars: int) -> str:
    """The start of `text` that holds at most `limit` characters, ending where `cut` would
    cut (or where a finer cut of the piece that crosses the limit would)."""
    if len(text) <= limit:
        return text
    window = text[:limit + max_chars]  # enough to see the boundaries around the limit
    end = 0
    for a, b in _spans(window, 0, len(window), max(1, max_chars), 0):
        if b <= limit:
            end = b
            continue
        if a < limit:
            end = _spans(window, a, b, limit - a, 0)[0][1]
        break
    return window[:end].rstrip()


def _spans(text: str, start: int, end: int, limit: int, level: int) -> list[tuple[int, int]]:
    """text[start:end] as trimmed (a, b) spans of at most `limit` characters, cut at the
    boundaries of `level` (0 sentences, 1 clauses, 2 words, 3 length) and finer ones only
    inside a part that is too long."""
    if level == 3:
        return _by_length(text, start, end, limit)
    pattern = (_SPEECH_END, _CLAUSE_END, _SPACE)[level]
    cuts = [m.end() for m in pattern.finditer(text, start, end)
            if level != 0 or not _abbreviation(text, m)]
    out: list[tuple[int, int]] = []
    a = b = -1  # the piece being packed
    for x, y in zip([start, *cuts], [*cuts, end], strict=True):
        x, y = _trim(text, x, y)
        if x >= y:
            continue
        if y - x > limit:  # too long alone: its own finer cuts
            if a >= 0:
                out.append((a, b))
                a = -1
            out += _spans(text, x, y, limit, level + 1)
        elif a >= 0 and y - a <= limit:
            b = y
        else:
            if a >= 0:
                out.append((a, b))
            a, b = x, y
    if a >= 0:
        out.append((a, b))
    return out


def _by_length(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    out = []
    a = start
    while a < end:
        b = min(end, a + limit)
        # Not between a letter and its combining accent, joiner or variation selector.
        while a + 1 < b < end and (unicodedata.combining(text[b]) or text[b] in _CLINGING):
            b -= 1
        out.append((a, b))
        a = b
    return out


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _abbreviation(text: str, match: re.Match[str]) -> bool:
    """A single period after "Dr", "e.g", "J": not a sentence end (see `_ends_sentence`)."""
    if match.group().rstrip("".join(_CLOSERS)) != ".":
        return False
    k = i = match.start()
    while k > 0 and not text[k - 1].isspace() and text[k - 1] not in _TOKEN_STOP:
        k -= 1
    word = text[k:i]
    return (word.lower() in _ABBREVIATIONS or bool(_DOTTED.fullmatch(word))
            or (len(word) == 1 and word.isupper()))
