"""Documents: uploading (the file into Object Store bucket `docs`, then `document.uploaded`
on the document's own log) and deleting. The API (`POST /api/v1/documents`) and
`vagent docs add` both upload through `Documents.upload`, so both refuse the same files.

The indexer actor takes it from `document.uploaded`: it parses, chunks and embeds the file
and records `document.indexed` or `document.failed`; `document.deleted` removes the chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from bus.blobs import delete_document, put_document
from bus.client import Bus
from bus.errors import ConflictError
from bus.log import load
from domain.doctext import min_chunks, plain_text_chars
from domain.errors import Conflict, NotFound, TooLarge, Unsupported
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed, DocumentUploaded, new_id

# The types the indexer reads, by file extension and, for a name without one of these, by
# the declared content type.
BY_EXTENSION = {".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown",
                ".markdown": "text/markdown", ".html": "text/html", ".htm": "text/html",
                ".pdf": "application/pdf"}
BY_CONTENT_TYPE = {"text/plain": "text/plain", "text/markdown": "text/markdown",
                   "text/x-markdown": "text/markdown", "text/html": "text/html",
                   "application/xhtml+xml": "text/html", "application/pdf": "application/pdf"}
SUPPORTED = ("txt", "md", "html", "pdf")
MAX_TITLE = 200
MAX_FILENAME = 255
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def document_type(filename: str, content_type: str | None) -> str:
    """The document's content type, from its extension or else its declared type; 415 for
    anything the indexer cannot read."""
    by_extension = BY_EXTENSION.get(PurePosixPath(filename).suffix.lower())
    if by_extension:
        return by_extension
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in BY_CONTENT_TYPE:
        return BY_CONTENT_TYPE[declared]
    raise Unsupported("unsupported_type",
                      f"{filename or 'the file'!s} is not a document vagent reads: "
                      f"send {', '.join(SUPPORTED)}",
                      {"field": "file", "filename": filename, "content_type": declared,
                    "supported": list(SUPPORTED)})


def clean_filename(filename: str) -> str:
    """The name's last path component, printable, at most 255 characters."""
    name = _UNPRINTABLE.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        keep = dot and len(ext) < 16
        name = stem[: MAX_FILENAME - len(ext) - 1] + dot + ext if keep else name[:MAX_FILENAME]
    return name


def default_title(filename: str) -> str:
    stem = PurePosixPath(filename).stem if filename else ""
    return (" ".join(stem.replace("_", " ").split()) or "Untitled")[:MAX_TITLE]


async def _check_length(filename: str, data: bytes | BinaryIO, limit: int) -> None:
    """413 for a plain text that cannot fit in the chunk limit (the indexer would refuse
    it after parsing it; a 20 MiB text takes minutes). Other types tell only once parsed:
    the indexer refuses them then, before chunking, with `document.failed`."""
    def count() -> int | None:
        raw = _peek(data)
        return None if raw is None else plain_text_chars(raw)

    chars = await asyncio.to_thread(count)
    if chars is None:
        return
    at_least = min_chunks(chars)
    if at_least > limit:
        raise TooLarge("document_too_long",
                       f"{filename or 'the file'} would make at least {at_least} passages; "
                       f"a document may make {limit}: split it",
                       {"field": "file", "min_chunks": at_least, "limit": limit})


def _peek(data: bytes | BinaryIO) -> bytes | None:
    """The whole content, leaving a file where it was; None for a stream that cannot go
    back (`vagent docs add` streams its files: the indexer checks those)."""
    if isinstance(data, bytes):
        return data
    seekable = getattr(data, "seekable", None)
    if seekable is None or not seekable():
        return None
    start = data.tell()
    try:
        return data.read()
    finally:
        data.seek(start)


@dataclass
class DocumentState:
    document_id: str
    owner_id: str | None
    object_name: str
    status: str = "uploaded"  # uploaded | indexed | failed
    deleted: bool = False
    last_seq: int = 0


async def load_document(bus: Bus, document_id: str) -> DocumentState | None:
    """The document as its log has it, None if it never existed (or the id is no id)."""
    try:
        entries, last = await load(bus, "doc", document_id)
    except ValueError:  # not a valid id token
        return None
    state: DocumentState | None = None
    for entry in entries:
        match entry.event:
            case DocumentUploaded() as uploaded:
                state = DocumentState(document_id, uploaded.owner_id,
                                      uploaded.object_name or document_id, last_seq=last)
            case DocumentIndexed() if state:
                state.status = "indexed"
            case DocumentFailed() if state:
                state.status = "failed"
            case DocumentDeleted() if state:
                state.deleted = True
    return state


Usage = Callable[[str], Awaitable[tuple[int, int]]]  # owner → (documents, bytes), deleted ones not


@dataclass(frozen=True)
class Quota:
    """What one user may keep: documents and bytes over their documents not deleted
    (failed ones too: their files stay stored until deleted)."""

    documents: int
    bytes: int
    usage: Usage


# One upload at a time per owner in this process, from the usage check to the stored event,
# so two concurrent uploads cannot both fit in the last free slot. (Edges in other
# processes can still race: each overshoots by at most its own upload.)
_owner_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


@contextlib.asynccontextmanager
async def _one_upload_at_a_time(owner_id: str) -> AsyncIterator[None]:
    lock = _owner_locks.get(owner_id)
    if lock is None:
        lock = _owner_locks[owner_id] = asyncio.Lock()
    async with lock:
        yield


class Documents:
    def __init__(self, bus: Bus, max_bytes: int, *, max_chunks: int, quota: Quota | None = None) -> None:
        self.bus = bus
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks  # [knowledge] max_chunks
        self.quota = quota  # None: no per-owner quota (the operator's `vagent docs add`)

    async def upload(self, owner_id: str | None, filename: str, data: bytes | BinaryIO, *, size: int,
                     title: str | None = None, content_type: str | None = None,
                     document_id: str | None = None) -> DocumentUploaded:
        """Store the file, then record `document.uploaded`; the event. 415 for a type the
        indexer does not read; 413 over the size limit, for a plain text too long for the
        chunk limit, or past the owner's quota: nothing is stored then."""
        filename = clean_filename(filename)
        kind = document_type(filename, content_type)
        if size > self.max_bytes:
            raise TooLarge("body_too_large", f"the upload exceeds {self.max_bytes} bytes",
                           {"limit": self.max_bytes})
        if kind == "text/plain":
            await _check_length(filename, data, self.max_chunks)
        if self.quota is None or owner_id is None:
            return await self._store(owner_id, filename, kind, data, title, document_id)
        async with _one_upload_at_a_time(owner_id):
            await self._check_quota(self.quota, owner_id, size)
            return await self._store(owner_id, filename, kind, data, title, document_id)

    async def _check_quota(self, quota: Quota, owner_id: str, size: int) -> None:
        documents, used = await quota.usage(owner_id)
        if documents + 1 > quota.documents:
            raise TooLarge("quota_exceeded",
                           f"you have {documents} documents, the most one account keeps is "
                           f"{quota.documents}: delete some first",
                           {"quota": "documents", "limit": quota.documents, "used": documents})
        if used + size > quota.bytes:
            raise TooLarge("quota_exceeded",
                           f"your documents take {used} bytes and this one {size}: one account "
                           f"keeps at most {quota.bytes} bytes, delete some first",
                           {"quota": "bytes", "limit": quota.bytes, "used": used, "size": size})

    async def _store(self, owner_id: str | None, filename: str, kind: str, data: bytes | BinaryIO,
                     title: str | None, document_id: str | None) -> DocumentUploaded:
        title = " ".join((title or "").split())[:MAX_TITLE] or default_title(filename)
        document_id = document_id or new_id()
        stored = await put_document(self.bus, document_id, data)
        event = DocumentUploaded(document_id=document_id, owner_id=owner_id, title=title,
                                 filename=filename, content_type=kind, size=stored,
                                 object_name=document_id)
        try:
            await self.bus.append(event, 0)
        except BaseException:
            with contextlib.suppress(Exception):  # no event, no file (if NATS lets us)
                await delete_document(self.bus, document_id)
            raise
        return event

    async def owned(self, owner_id: str | None, document_id: str) -> DocumentState:
        """The document if it exists and is `owner_id`'s; 404 otherwise (also for others')."""
        state = await load_document(self.bus, document_id)
        if state is None or state.deleted or state.owner_id != owner_id:
            raise NotFound("document", document_id)
        return state

    async def delete(self, owner_id: str | None, document_id: str) -> None:
        """Record `document.deleted` (the indexer then removes its chunks) and remove the file."""
        for _ in range(5):
            state = await self.owned(owner_id, document_id)
            try:
                await self.bus.append(DocumentDeleted(document_id=document_id), state.last_seq)
            except ConflictError:
                continue  # the indexer recorded its result meanwhile: decide again
            await delete_document(self.bus, state.object_name)
            return
        raise Conflict("conflict", "the document changed meanwhile: retry")
