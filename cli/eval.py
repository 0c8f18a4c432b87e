"""`vagent eval`: a suite's result as a table per turn, its failures line by line, the exit
code CI reads; and `--from-sessions`, recorded sessions written out as a suite (the
evaluation itself is `evals.engine`)."""

from __future__ import annotations

import sys
from pathlib import Path

from bus.client import Bus
from cli.display import Column, clip, shorten, table
from cli.sessions import parse_since
from evals.engine import SuiteResult, TurnResult
from evals.from_sessions import Made, suite_from_sessions
from projections.client import QueryError, run_query


def progress(turn: TurnResult) -> None:
    """One line per turn on stderr while the suite runs (the table comes at the end)."""
    verdict = "pass" if turn.passed else "FAIL"
    print(f"  {turn.conversation} turn {turn.n}: {verdict} ({turn.seconds:.1f} s)",
          file=sys.stderr, flush=True)


def _latency(turn: TurnResult) -> str:
    for stage in ("first_audio_ms", "first_delta_ms", "answer_ms"):
        if stage in turn.latency_ms:
            return f"{turn.latency_ms[stage]:.0f} ms"
    return "-"


def print_result(result: SuiteResult, wide: bool = False) -> None:
    print(f"suite {result.name} ({result.path}); LLM: {result.llm}; judge: {result.judge or 'none'}")
    rows = []
    for turn in result.turns:
        misses = turn.failures
        verdict = "pass" if not misses else "FAIL " + ", ".join(c.expected.split(" ")[0] for c in misses)
        said = turn.input if turn.transcript is None else f"{turn.input} “{turn.transcript}”"
        rows.append([turn.conversation, turn.n, shorten(said, 200), shorten(turn.answer, 200) or "-",
                     len(turn.checks) - 1, _latency(turn), verdict])
    print(table([Column("conversation", 14), "turn", Column("input", 18), Column("answer", 24), "checks",
                 "latency", Column("result", 24)], rows, wide=wide))
    failures = [(t, c) for t in result.turns for c in t.failures]
    if failures:
        print("\nfailures:")
        for turn, check in failures:
            line = (f"  {result.path}:{check.line}: {turn.conversation} turn {turn.n}: "
                    f"{check.expected}: got {check.got}")
            print(line if wide else clip(line, 160))
    passed = sum(t.passed for t in result.turns)
    print(f"\n{len(result.turns)} turns: {passed} passed, {len(result.turns) - passed} failed "
          f"({result.seconds:.1f} s)")


async def session_ids(bus: Bus, data_dir: Path, given: list[str], since: str | None, limit: int) -> list[str]:
    """The sessions named, and with `since` those started since then (newest first)."""
    ids = list(given)
    if since:
        try:
            columns, rows = await run_query(bus, data_dir, "sessions_table",
                                            {"user": None, "assistant_id": None,
                                             "since": parse_since(since), "limit": limit})
        except QueryError as exc:
            raise ValueError(f"cannot list the sessions: {exc}") from None
        at = columns.index("session_id")
        ids += [r[at] for r in rows]
    return list(dict.fromkeys(ids))


async def write_suite(bus: Bus, data_dir: Path, given: list[str], since: str | None, limit: int,
                      out: Path, name: str) -> Made:
    made = await suite_from_sessions(bus, await session_ids(bus, data_dir, given, since, limit), name)
    out.write_text(made.text, encoding="utf-8")
    return made
