"""`vagent replay SID`: the replay's report, side by side or as JSON (the replay itself is
`replay.engine`)."""

from __future__ import annotations

import json
import textwrap

from cli.display import ms
from replay.engine import Report

WIDTH = 44


def _cell(text: str | None) -> list[str]:
    if text is None or text == "":
        return ["-"]
    return textwrap.wrap(" ".join(text.split()), WIDTH) or ["-"]


def print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, default=str))
        return
    print(f"replay of session {report.session_id} (assistant {report.assistant_id or 'default'}); "
          f"replay LLM: {report.llm}")
    for diff in report.turns:
        o, r = diff.original, diff.replay
        kind = "voice" if o.input_type == "transcript.final" else "typed"
        print(f"\nturn {diff.n} ({kind})")
        print(f"  {'':<16}{'original':<{WIDTH + 2}}replay")
        rows: list[tuple[str, str | None, str | None, bool]] = [
            ("transcript" if kind == "voice" else "input", o.transcript, r.transcript, diff.same_transcript),
            ("answer", o.answer, r.answer, diff.same_answer),
            ("tools", "; ".join(o.tools) or None, "; ".join(r.tools) or None, diff.same_tools),
            ("model", "/".join(x for x in (o.provider, o.model) if x) or None,
             "/".join(x for x in (r.provider, r.model) if x) or None, True),
        ]
        if o.error or r.error:
            rows.append(("error", o.error, r.error, o.error == r.error))
        if o.interrupted or r.interrupted:
            rows.append(("interrupted", str(o.interrupted), str(r.interrupted),
                         o.interrupted == r.interrupted))
        for label, left, right, same in rows:
            lines_l, lines_r = _cell(left), _cell(right)
            for i in range(max(len(lines_l), len(lines_r))):
                a = lines_l[i] if i < len(lines_l) else ""
                b = lines_r[i] if i < len(lines_r) else ""
                flag = ("  " if same else "≠ ") if i == 0 else "  "
                print(f"{flag}{label if i == 0 else '':<14}  {a:<{WIDTH}}  {b}".rstrip())
        for name in dict.fromkeys([*o.latency_ms, *r.latency_ms]):
            if "complete" in name:
                continue
            was, now = o.latency_ms.get(name), r.latency_ms.get(name)
            delta = f"  ({now - was:+.0f} ms)" if was is not None and now is not None else ""
            print(f"    {name:<30}{ms(was):>10}  →  {ms(now):>10}{delta}")
        if diff.note:
            print(f"  note: {diff.note}")
    same_answers = sum(1 for d in report.turns if d.same_answer)
    heard = [d for d in report.turns if d.original.input_type == "transcript.final"]
    transcripts = sum(1 for d in heard if d.same_transcript)
    print(f"\n{len(report.turns)} turns: {same_answers} answers the same"
          + (f", {transcripts}/{len(heard)} transcripts the same" if heard else ""))
