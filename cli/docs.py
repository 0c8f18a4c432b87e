"""`vagent docs`: the knowledge base from a terminal, straight over NATS (no API, no token).

`docs add` uploads through the same code as `POST /api/v1/documents` (domain.documents),
with a progress bar, then follows each document's log until the indexer has recorded
`document.indexed` or `document.failed`. Lists read the documents read model; search asks
the running stack's tools actor over NATS (the search the assistants run), so this process
never opens the knowledge base's files while the stack writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import msgspec

from bus.client import Bus, Message
from bus.log import last_event
from bus.subjects import aggregate_events
from cli.accounts import Admin, AdminError, accounts, resolve_user, rows
from cli.display import Column, minute, shorten, table
from domain.documents import Documents
from domain.errors import DomainError
from projections.client import QueryError, run_query
from projections.knowledge.query import SearchError, SearchRequest, ask
from schemas import DecodeError, DocumentDeleted, DocumentFailed, DocumentIndexed, decode, new_id


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False))


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


async def owner_of(admin: Admin, who: str | None) -> tuple[str | None, str]:
    """(owner id, how to name them): None for the system's documents (no --user)."""
    if who is None:
        return None, "the system"
    user = await resolve_user(accounts(admin), who)
    return user.user_id, user.email


# --- add --------------------------------------------------------------------------------------


class _Counting(io.RawIOBase):
    """A binary file that reports how much of it was read (the object store reads it in
    chunks from a worker thread)."""

    def __init__(self, file: io.BufferedReader, advance: Callable[[int], None]) -> None:
        self.file, self.advance = file, advance

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.file.readinto(buffer)
        self.advance(n or 0)
        return n or 0


@dataclass
class Added:
    path: Path
    document_id: str = ""
    title: str = ""
    size: int = 0
    status: str = "pending"  # pending | uploaded | indexed | failed | refused | deleted | timeout
    chunks: int = 0
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "document_id": self.document_id or None, "title": self.title,
                "size": self.size, "status": self.status, "chunks": self.chunks, "error": self.error}


class Reporter:
    """A rich progress bar on a terminal; plain lines (one per step of each file) otherwise."""

    def __init__(self, files: list[Added], quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.tasks: dict[int, Any] = {}
        if not quiet and sys.stdout.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
            from rich.table import Column

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                                     DownloadColumn(table_column=Column(no_wrap=True, min_width=15)),
                                     TextColumn("{task.fields[status]}",
                                                table_column=Column(no_wrap=True, overflow="ellipsis")))
            for item in files:
                self.tasks[id(item)] = self.progress.add_task(
                    shorten(item.path.name, 32), total=None, status="waiting")

    def __enter__(self) -> Reporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, item: Added) -> Callable[[int], None]:
        if self.progress is not None:
            task = self.tasks[id(item)]
            self.progress.update(task, total=item.size, status="uploading")
            return lambda n: self.progress.advance(task, n)
        return lambda n: None

    def step(self, item: Added) -> None:
        text = {"uploaded": f"uploaded as {item.document_id} ({size_text(item.size)}), indexing…",
                "indexed": f"indexed, {item.chunks} chunk{'s' if item.chunks != 1 else ''}",
                "failed": f"failed: {item.error}",
                "refused": f"refused: {item.error}",
                "deleted": "deleted before it was indexed",
                "timeout": f"still indexing ({item.error})"}[item.status]
        if self.progress is not None:  # compact: the bar and the byte count say the rest
            short = {"uploaded": "indexing…", "indexed": text}.get(item.status, shorten(text, 36))
            self.progress.update(self.tasks[id(item)], status=short)
        elif not self.quiet:
            print(f"{item.path.name}: {text}", flush=True)


async def add_documents(admin: Admin, paths: list[Path], who: str | None, title: str | None,
                        wait: bool, timeout: float, as_json: bool) -> None:
    bus = admin.bus
    await bus.declare()
    owner_id, owner_name = await owner_of(admin, who)
    if title is not None and len(paths) > 1:
        raise AdminError("--title names one document: give one file")
    docs = Documents(bus, admin.config.edge.max_upload_bytes,
                     max_chunks=admin.config.knowledge.max_chunks)
    files = [Added(path) for path in paths]
    watchers: list[Any] = []
    with Reporter(files, quiet=as_json) as report:
        for item in files:
            await _upload(bus, docs, item, owner_id, title, report, watchers, wait)
        waiting = [item for item in files if item.status == "uploaded"]
        if wait and waiting:
            deadline = time.monotonic() + timeout
            for item in waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(item.done.wait(), max(0.0, deadline - time.monotonic()))
                if item.status == "uploaded":
                    item.status, item.error = "timeout", f"no result in {timeout:g}s: is the indexer running?"
                    report.step(item)
        for watcher in watchers:
            await watcher()
    if as_json:
        print_json([item.as_json() for item in files])
    elif not wait:
        pass
    else:
        indexed = sum(1 for item in files if item.status == "indexed")
        print(f"{indexed} of {len(files)} document{'s' if len(files) != 1 else ''} indexed for {owner_name}")
    bad = [item for item in files if item.status in ("failed", "refused", "timeout", "deleted")]
    if bad:
        raise AdminError("; ".join(f"{item.path.name}: {item.status}"
                                   + (f" ({item.error})" if item.error else "") for item in bad))


async def _upload(bus: Bus, docs: Documents, item: Added, owner_id: str | None, title: str | None,
                  report: Reporter, watchers: list[Any], wait: bool) -> None:
    try:
        item.size = item.path.stat().st_size
        handle = item.path.open("rb")
    except OSError as exc:
        item.status, item.error = "refused", exc.strerror or str(exc)
        report.step(item)
        return
    document_id = new_id()
    if wait:  # follow the document's log from before its first event
        watchers.append((await bus.subscribe(aggregate_events("doc", document_id),
                                             lambda msg: _result(item, msg, report))).stop)
    try:
        with handle:
            counting = cast(BinaryIO, _Counting(handle, report.start(item)))  # io's classes are not typing's
            event = await docs.upload(owner_id, item.path.name, counting,
                                      size=item.size, title=title, document_id=document_id)
    except DomainError as exc:
        item.status, item.error = "refused", exc.message
        report.step(item)
        return
    item.document_id, item.title, item.size = event.document_id, event.title, event.size
    if item.status == "pending":
        item.status = "uploaded"
        report.step(item)
    if wait:  # a result stored before the subscription saw it (a fast indexer)
        for kind in ("document.indexed", "document.failed", "document.deleted"):
            found = await last_event(bus, "doc", document_id, kind)
            if found is not None:
                _apply(item, found, report)


async def _result(item: Added, msg: Message, report: Reporter) -> None:
    try:
        event = decode(msg.data)
    except DecodeError:
        return
    _apply(item, event, report)


def _apply(item: Added, event: Any, report: Reporter) -> None:
    if item.done.is_set():
        return
    match event:
        case DocumentIndexed():
            item.status, item.chunks = "indexed", event.chunks
        case DocumentFailed():
            item.status, item.error = "failed", event.reason
        case DocumentDeleted():
            item.status = "deleted"
        case _:
            return
    if item.status == "pending":
        return
    item.done.set()
    report.step(item)


# --- list, search, delete ---------------------------------------------------------------------


async def list_documents(admin: Admin, who: str | None, as_json: bool, wide: bool = False) -> None:
    owner_id, owner_name = await owner_of(admin, who)
    found = await rows(admin, "documents", owner_id=owner_id)
    if as_json:
        print_json(found)
        return
    if not found:
        print(f"{owner_name} has no documents")
        return
    print(table([Column("document", 10, id=True), Column("title", 14), Column("file", 12), "size",
                 Column("status", 12), "chunks", "uploaded"],
                [[d["document_id"], d["title"], d["filename"], size_text(d["size"]),
                  d["status"] + (f" ({d['error']})" if d["error"] else ""),
                  d["chunks"], minute(d["uploaded_ts"])] for d in found], wide=wide))


async def search_documents(admin: Admin, query: str, who: str | None, assistant_id: str | None,
                           limit: int, as_json: bool) -> None:
    owner_id, _ = await owner_of(admin, who)
    document_ids: list[str] | None = None
    if assistant_id is not None:
        # An administrator's search: the assistant's own owner, unless --user says whose.
        found = [a for a in await _assistant(admin, assistant_id)
                 if who is None or a["owner_id"] == owner_id]
        if not found:
            raise AdminError(f"no assistant {assistant_id!r}" + (f" of {who}" if who else ""))
        owner_id, document_ids = found[0]["owner_id"], list(found[0]["documents"] or [])
    hits: list[Any] = []
    if document_ids != []:  # an assistant without documents finds nothing
        try:
            hits = await ask(admin.bus, SearchRequest(query=query, owner_id=owner_id,
                                                      document_ids=document_ids, limit=limit))
        except SearchError as exc:
            raise AdminError(str(exc)) from None
    if as_json:
        print_json([msgspec.structs.asdict(hit) for hit in hits])
        return
    if not hits:
        print("nothing found")
        return
    for rank, hit in enumerate(hits, start=1):
        where = f"{hit.title} #{hit.chunk_index}" + (f" · {hit.heading}" if hit.heading else "")
        print(f"{rank}. {where}  ({hit.document_id}, score {hit.score:.4f})")
        print(f"   {shorten(hit.text, 200)}")


async def _assistant(admin: Admin, assistant_id: str) -> list[dict[str, Any]]:
    try:
        columns, found = await run_query(admin.bus, admin.data_dir, "assistant_settings",
                                         {"assistant_id": assistant_id}, fresh=True)
    except QueryError as exc:
        raise AdminError(str(exc)) from None
    return [dict(zip(columns, row, strict=True)) for row in found]


async def delete_document(admin: Admin, document_id: str, who: str | None, as_json: bool) -> None:
    await admin.bus.declare()
    owner_id, owner_name = await owner_of(admin, who)
    await Documents(admin.bus, admin.config.edge.max_upload_bytes,
                    max_chunks=admin.config.knowledge.max_chunks).delete(owner_id, document_id)
    if as_json:
        print_json({"document_id": document_id, "deleted": True})
    else:
        print(f"deleted document {document_id} of {owner_name}")


# --- reindex ----------------------------------------------------------------------------------


async def reindex_documents(admin: Admin, as_json: bool) -> None:
    from projections.knowledge.embed import embedder
    from projections.knowledge.reindex import reindex
    from projections.knowledge.store import store

    await admin.bus.declare()
    knowledge = admin.config.knowledge
    await asyncio.to_thread(embedder, knowledge.embed_threads)

    def progress(title: str, n: int, total: int) -> None:
        if not as_json:
            print(f"\r[{n}/{total}] {shorten(title, 60):<60}", end="", file=sys.stderr, flush=True)

    done = await reindex(admin.bus, store(admin.data_dir), max_chunks=knowledge.max_chunks,
                         embed_threads=knowledge.embed_threads, progress=progress)
    if as_json:
        print_json(done.as_json())
        return
    if done.indexed or done.failed:
        print(file=sys.stderr)
    if done.model_changed:
        print("the chunks were made with another embedding model: all of them were made again")
    print(f"{len(done.indexed)} document(s) indexed ({sum(done.indexed.values())} chunks), "
          f"{len(done.failed)} failed, {len(done.missing)} without their file, "
          f"{done.removed} stray chunk(s) removed; {len(done.recorded)} new outcome(s) recorded")
    for document_id, reason in done.failed.items():
        print(f"  failed  {document_id}: {reason}")
    for document_id in done.missing:
        print(f"  missing {document_id}: the file is not in the docs bucket")
