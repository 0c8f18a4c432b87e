"""The local-model eval set and its scoring: deterministic on a recorded answer set."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from benches.eval_set import RULE_KINDS, load_eval_set, score

RECORDED = Path(__file__).parent / "data" / "local_llm_answers.json"


def test_the_eval_set_covers_what_a_voice_assistant_is_asked() -> None:
    questions = load_eval_set()
    assert 20 <= len(questions) <= 30
    categories = {q.category for q in questions}
    assert {"small talk", "facts", "time tool", "calculator", "follow-up", "refusal",
            "Mandarin"} <= categories
    assert sum(q.category == "Mandarin" for q in questions) == 5
    assert all(q.before for q in questions if q.category == "follow-up")
    assert {q.rule["kind"] for q in questions} <= RULE_KINDS


def test_recorded_answers_score_as_recorded() -> None:
    recorded = json.loads(RECORDED.read_text())
    asked_at = datetime.fromisoformat(recorded["asked_at"])
    questions = {q.id: q for q in load_eval_set()}
    verdicts = [(row["id"], row["answer"], score(questions[row["id"]], row["answer"], asked_at))
                for row in recorded["answers"]]
    wrong = [(qid, answer, got) for (qid, answer, got), row in zip(verdicts, recorded["answers"], strict=True)
             if got != row["expected"]]
    assert not wrong
    assert sum(got for _, _, got in verdicts) == sum(row["expected"] for row in recorded["answers"])


def test_scoring_is_the_same_every_time() -> None:
    recorded = json.loads(RECORDED.read_text())
    asked_at = datetime.fromisoformat(recorded["asked_at"])
    questions = {q.id: q for q in load_eval_set()}
    runs = {tuple(score(questions[r["id"]], r["answer"], asked_at) for r in recorded["answers"])
            for _ in range(3)}
    assert len(runs) == 1


def test_a_bad_eval_set_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "eval.toml"
    bad.write_text('[[question]]\nid = "a"\ncategory = "x"\nask = "?"\nrule = { kind = "vibes" }\n')
    with pytest.raises(ValueError, match="unknown rule kind"):
        load_eval_set(bad)
