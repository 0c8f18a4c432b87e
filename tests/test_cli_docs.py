"""`vagent docs add/list/search/delete`: the real command in subprocesses, over a real NATS,
with `vagent projections serve` keeping the read models, `vagent actor run indexer`
indexing into the same data dir and `vagent actor run tools` answering the searches."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.server import EmbeddedServer
from schemas import new_id
from tests.fixtures.pdf import make_pdf
from tests.procs import projections_serving, running, vagent

PASSWORD = "correct horse 9"
CORPUS = Path(__file__).parent / "fixtures" / "corpus"
Stack = tuple[EmbeddedServer, Path]


@pytest.fixture(scope="module")
def stack(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("data")
    with (projections_serving(module_nats.url, data),
          running(["actor", "run", "indexer", "--nats", module_nats.url], "actor indexer running",
                  VAGENT_DATA_DIR=str(data)),
          # `vagent docs search` asks the tools actor, which searches the knowledge base.
          running(["actor", "run", "tools", "--nats", module_nats.url], "actor tools running",
                  VAGENT_DATA_DIR=str(data))):
        yield module_nats, data


def cli(stack: Stack, *args: str, ok: bool = True, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    nats, data = stack
    done = vagent(*args, "--nats", nats.url, "--data-dir", str(data), stdin=stdin, timeout=120)
    if ok:
        assert done.returncode == 0, f"vagent {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def cli_json(stack: Stack, *args: str) -> Any:
    return json.loads(cli(stack, *args, "--json").stdout)


def user(stack: Stack) -> str:
    email = f"docs{new_id().lower()}@example.com"
    cli(stack, "users", "create", email, "--password-stdin", stdin=PASSWORD + "\n")
    return email


def test_add_shows_each_file_go_from_uploaded_to_indexed(stack: Stack, tmp_path: Path) -> None:
    email = user(stack)
    files = [CORPUS / "harbor-kayak.txt", CORPUS / "solaris-thermostat.md", CORPUS / "pixelpro-camera.pdf",
             CORPUS / "nimbus-router.html"]
    done = cli(stack, "docs", "add", *map(str, files), "--user", email)
    lines = done.stdout.splitlines()
    for path in files:
        mine = [line for line in lines if line.startswith(f"{path.name}: ")]
        assert len(mine) == 2, done.stdout
        assert mine[0].startswith(f"{path.name}: uploaded as ") and "indexing" in mine[0]
        assert mine[1].startswith(f"{path.name}: indexed, ") and mine[1].endswith(("chunk", "chunks"))
        assert lines.index(mine[0]) < lines.index(mine[1])
    assert lines[-1] == f"4 of 4 documents indexed for {email}"
    listed = cli_json(stack, "docs", "list", "--user", email)
    assert sorted(d["filename"] for d in listed) == sorted(p.name for p in files)
    assert {d["status"] for d in listed} == {"indexed"} and all(d["chunks"] > 0 for d in listed)
    table = cli(stack, "docs", "list", "--user", email, "--wide").stdout
    assert "harbor-kayak" in table and "indexed" in table and "2.3 KB" in table
    assert all(d["document_id"] in table for d in listed)
    assert max(map(len, cli(stack, "docs", "list", "--user", email).stdout.splitlines())) <= 100


def test_add_reports_failures_and_refusals_and_exits_1(stack: Stack, tmp_path: Path) -> None:
    email = user(stack)
    empty, broken, exe = tmp_path / "empty.txt", tmp_path / "broken.pdf", tmp_path / "tool.exe"
    empty.write_bytes(b"")
    broken.write_bytes(b"%PDF-1.7\nnot really")
    exe.write_bytes(b"MZ")
    good = tmp_path / "good.pdf"
    good.write_bytes(make_pdf(["Kettle K9", "Descale the kettle monthly with citric acid."]))
    done = cli(stack, "docs", "add", str(empty), str(broken), str(exe), str(good),
               str(tmp_path / "missing.md"), "--user", email, ok=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    out = done.stdout
    assert "empty.txt: failed: " in out and "broken.pdf: failed: " in out
    assert "tool.exe: refused: " in out and "good.pdf: indexed, " in out and "missing.md: refused: " in out
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert "empty.txt: failed" in done.stderr and "tool.exe: refused" in done.stderr
    statuses = {d["filename"]: d["status"] for d in cli_json(stack, "docs", "list", "--user", email)}
    assert statuses == {"empty.txt": "failed", "broken.pdf": "failed", "good.pdf": "indexed"}
    added = json.loads(cli(stack, "docs", "add", str(good), "--user", email, "--title", "Kettle manual",
                           "--json").stdout)
    assert [(a["title"], a["status"]) for a in added] == [("Kettle manual", "indexed")]
    assert added[0]["chunks"] >= 1 and added[0]["document_id"]


def test_search_finds_the_answer_among_a_users_documents_only(stack: Stack) -> None:
    alice, bob = user(stack), user(stack)
    names = ["harbor-kayak.txt", "brewmaster-espresso.txt", "trailblazer-ebike.md"]
    added = {a["file"].rsplit("/", 1)[-1]: a["document_id"]
             for a in json.loads(cli(stack, "docs", "add", *(str(CORPUS / n) for n in names),
                                     "--user", alice, "--json").stdout)}
    question = "How many hours until the e-bike battery is completely charged?"
    hits = cli_json(stack, "docs", "search", question, "--user", alice, "--limit", "3")
    assert hits and hits[0]["document_id"] == added["trailblazer-ebike.md"]
    text = cli(stack, "docs", "search", question, "--user", alice).stdout
    assert text.startswith("1. trailblazer-ebike #") and added["trailblazer-ebike.md"] in text
    assert cli(stack, "docs", "search", question, "--user", bob).stdout.strip() == "nothing found"
    # An assistant's documents only.
    assistant = cli_json(stack, "assistants", "create", "--user", alice, "--name", "Paddler",
                         "--persona", "You know kayaks.")
    hits = cli_json(stack, "docs", "search", question, "--assistant", assistant["assistant_id"])
    assert hits == []  # it has no documents
    refused = cli(stack, "docs", "search", question, "--assistant", assistant["assistant_id"], "--user", bob,
                  ok=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: no assistant")


def test_a_chinese_question_finds_a_chinese_document(stack: Stack) -> None:
    email = user(stack)
    zh = Path(__file__).parent / "fixtures" / "corpus-zh"
    added = {}
    for name, title in (("water-heater.md", "暖泉电热水器说明"), ("rice-cooker.md", "禾香电饭煲说明书")):
        done = json.loads(cli(stack, "docs", "add", str(zh / name), "--user", email, "--title", title,
                              "--json").stdout)
        added[name] = done[0]["document_id"]
    cli(stack, "docs", "add", str(CORPUS / "brewmaster-espresso.txt"), "--user", email)
    hits = cli_json(stack, "docs", "search", "热水器第一次用的时候能直接插电吗？", "--user", email)
    assert hits and hits[0]["document_id"] == added["water-heater.md"]
    assert hits[0]["title"] == "暖泉电热水器说明" and "注满水" in hits[0]["text"]
    text = cli(stack, "docs", "search", "米饭最多能保温多久", "--user", email).stdout
    assert text.startswith("1. 禾香电饭煲说明书 #"), text


def test_delete_removes_a_document(stack: Stack, tmp_path: Path) -> None:
    email = user(stack)
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe spare key is under the blue flowerpot.\n")
    [added] = json.loads(cli(stack, "docs", "add", str(note), "--user", email, "--json").stdout)
    assert added["status"] == "indexed"
    other = user(stack)
    refused = cli(stack, "docs", "delete", added["document_id"], "--user", other, ok=False)
    assert refused.returncode == 1 and "no document" in refused.stderr
    done = cli(stack, "docs", "delete", added["document_id"], "--user", email)
    assert done.stdout.strip() == f"deleted document {added['document_id']} of {email}"
    assert cli_json(stack, "docs", "list", "--user", email) == []
    assert cli(stack, "docs", "list", "--user", email).stdout.strip() == f"{email} has no documents"


def test_add_without_waiting_and_a_title_for_many_files_is_refused(stack: Stack) -> None:
    email = user(stack)
    done = cli(stack, "docs", "add", str(CORPUS / "harbor-kayak.txt"), "--user", email, "--no-wait")
    assert done.stdout.startswith("harbor-kayak.txt: uploaded as ") and "indexed," not in done.stdout
    refused = cli(stack, "docs", "add", str(CORPUS / "harbor-kayak.txt"),
                  str(CORPUS / "zenith-robot-vacuum.md"), "--title", "Both", "--user", email, ok=False)
    assert refused.returncode == 1 and "--title" in refused.stderr
    refused = cli(stack, "docs", "add", str(CORPUS / "harbor-kayak.txt"), "--user", "nobody@example.com",
                  ok=False)
    assert refused.returncode == 1 and "nobody@example.com" in refused.stderr
