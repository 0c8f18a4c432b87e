"""What a document's bytes tell before it is parsed: its text (for plain text) and the
fewest chunks it can make. The upload check (domain/documents.py) refuses a document the
indexer would refuse, both given the chunk limit (`[knowledge] max_chunks`)."""

from __future__ import annotations

CHUNK_MAX = 800  # the most characters of new text one chunk holds (the chunker's MAX)


class ParseError(Exception):
    """The document cannot be indexed; the message says why (it becomes document.failed)."""


def min_chunks(chars: int) -> int:
    """The fewest chunks `chars` characters of body text (single spaces) can make: every
    chunk's new text is at most CHUNK_MAX characters (prose makes more, its chunks ending
    earlier at paragraphs and sentences). Over the limit, a document is refused before it
    is chunked and embedded, which for a 20 MiB text takes minutes."""
    return -(-chars // CHUNK_MAX)


def decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            if data.count(b"\x00") > len(data) // 100:
                raise ParseError("not a text file (binary content)") from None
            text = data.decode("cp1252", errors="replace")
    if "\x00" in text:
        raise ParseError("not a text file (binary content)")
    return text


def plain_text_chars(data: bytes) -> int | None:
    """A plain-text file's characters other than whitespace, without parsing it (the
    chunker also keeps a space between words, so `min_chunks` of this stays a lower bound);
    None when it is not text. Plain counting: a fraction of a second for 20 MiB, where a
    regular expression over the whitespace takes seconds."""
    try:
        text = decode_text(data)
    except (ParseError, UnicodeDecodeError):
        return None
    return len(text) - sum(text.count(space) for space in " \t\n\r\f\v")
