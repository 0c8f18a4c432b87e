"""What the metrics make of events (real events, the real prometheus-client registry), the
`[telemetry] metrics` switch, and the Grafana dashboard's queries against what is exposed.
A real `vagent up` scraped by a real Prometheus: tests/test_prometheus.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from bus.server import EmbeddedServer
from schemas import (
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    Error,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnStarted,
    Usage,
    UserText,
    new_id,
)
from settings.config import Config, PriceConfig
from telemetry import metrics
from tests.api_harness import api_config, serve_api

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "vagent.json"
S = 1_000_000_000  # ns


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stage(name: str, input: str, part: str = "count") -> float:
    return sample(f"vagent_turn_stage_seconds_{part}", stage=name, input=input)


@pytest.fixture(autouse=True)
def configured() -> Iterator[None]:
    """The defaults before and after each test: the registry is the process's own."""
    metrics.configure(Config())
    yield
    metrics.configure(Config())


def test_a_voice_turns_stages_run_from_the_end_of_speech_each_once() -> None:
    t0 = 1_800_000_000 * S
    final = TranscriptFinal(session_id="s", text="what time is it", speech_started_ts=t0 - 2 * S,
                            speech_stopped_ts=t0, ts=t0 + S // 5)
    turn = final.id
    before = {s: (stage(s, "voice"), stage(s, "voice", "sum"))
              for s in ("transcript", "first_token", "first_sentence", "first_audio")}
    turns = sample("vagent_turns_total", input="voice")
    metrics.appended(final)
    metrics.appended(TurnStarted(session_id="s", turn_id=turn, ts=t0 + S // 4))
    for ts in (t0 + S // 2, t0 + S):  # only the first delta and the first sentence count
        metrics.appended(AssistantDelta(session_id="s", turn_id=turn, text="It", ts=ts))
        metrics.appended(AssistantSentence(session_id="s", turn_id=turn, text="It is noon.",
                                           ts=ts + S // 10))
    metrics.appended(TtsStarted(session_id="s", turn_id=turn, ts=t0 + 3 * S // 2))
    seen = {s: (stage(s, "voice") - c, round(stage(s, "voice", "sum") - total, 6))
            for s, (c, total) in before.items()}
    assert seen == {"transcript": (1, 0.2), "first_token": (1, 0.5), "first_sentence": (1, 0.6),
                    "first_audio": (1, 1.5)}
    assert sample("vagent_turns_total", input="voice") == turns + 1


def test_a_typed_turn_runs_from_the_user_text_known_by_consuming_it() -> None:
    """The dialogue consumes the input another process appended: it times the turn all the same;
    a turn whose input this process never saw is not timed."""
    t0 = 1_800_000_000 * S
    text = UserText(session_id="s", text="hello", ts=t0)
    count, total = stage("first_token", "text"), stage("first_token", "text", "sum")
    metrics.consumed(text)
    metrics.appended(AssistantDelta(session_id="s", turn_id=text.id, text="You", ts=t0 + S // 4))
    metrics.appended(AssistantDelta(session_id="s", turn_id=new_id(), text="You", ts=t0 + S))
    assert stage("first_token", "text") == count + 1
    assert stage("first_token", "text", "sum") - total == pytest.approx(0.25)
    # An empty input opens no turn.
    blank = UserText(session_id="s", text="  ", ts=t0)
    metrics.consumed(blank)
    metrics.appended(AssistantDelta(session_id="s", turn_id=blank.id, text="?", ts=t0 + S))
    assert stage("first_token", "text") == count + 1


def test_tokens_are_priced_by_the_model_else_the_providers_star() -> None:
    config = msgspec.structs.replace(Config(), prices=[
        PriceConfig(provider="p", model="big", prompt_per_million=10.0, completion_per_million=30.0),
        PriceConfig(provider="p", prompt_per_million=1.0, completion_per_million=2.0)])
    metrics.configure(config)
    assert metrics.price_of("p", "big") is config.prices[0]
    assert metrics.price_of("p", "small") is config.prices[1]
    assert metrics.price_of("q", "big") is None

    def cost(model: str, provider: str = "p") -> float:
        return sample("vagent_llm_cost_total", provider=provider, model=model, currency="USD")

    before = cost("big"), cost("small"), cost("big", "q")
    tokens = sample("vagent_llm_tokens_total", provider="q", model="big", kind="completion")
    for provider, model in (("p", "big"), ("p", "small"), ("q", "big")):
        metrics.appended(AssistantMessage(session_id="s", text="…", provider=provider, model=model,
                                          usage=Usage(prompt_tokens=1000, completion_tokens=500)))
    assert cost("big") - before[0] == pytest.approx((1000 * 10 + 500 * 30) / 1e6)
    assert cost("small") - before[1] == pytest.approx((1000 * 1 + 500 * 2) / 1e6)
    assert cost("big", "q") == before[2]  # no price: tokens only
    assert sample("vagent_llm_tokens_total", provider="q", model="big", kind="completion") == tokens + 500


def test_speech_heard_and_spoken_is_counted_and_priced_by_the_minute() -> None:
    metrics.configure(msgspec.structs.replace(Config(), prices=[
        PriceConfig(provider="hears", audio_in_per_minute=0.6),
        PriceConfig(provider="speaks", audio_out_per_minute=1.2)]))

    def seconds(direction: str, provider: str) -> float:
        return sample("vagent_audio_seconds_total", direction=direction, provider=provider)

    def cost(direction: str, provider: str) -> float:
        return sample("vagent_audio_cost_total", direction=direction, provider=provider, currency="USD")

    before = seconds("in", "hears"), cost("in", "hears"), seconds("out", "speaks"), cost("out", "speaks")
    t0 = 1_800_000_000 * S
    final = TranscriptFinal(session_id="s", text="hi", provider="hears", speech_started_ts=t0,
                            speech_stopped_ts=t0 + 3 * S, ts=t0 + 4 * S)
    metrics.appended(final)
    metrics.appended(TtsStarted(session_id="s", turn_id=final.id, provider="speaks"))
    metrics.appended(TtsStopped(session_id="s", turn_id=final.id, spoken_ms=1500))
    after = seconds("in", "hears"), cost("in", "hears"), seconds("out", "speaks"), cost("out", "speaks")
    assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx(
        [3.0, 3 / 60 * 0.6, 1.5, 1.5 / 60 * 1.2])


def test_interruptions_and_errors_are_counted_by_reason_and_code() -> None:
    barge = sample("vagent_interruptions_total", reason="barge_in")
    errors = sample("vagent_errors_total", code="llm_unavailable", source="dialogue")
    metrics.appended(TurnInterrupted(session_id="s", reason="barge_in"))
    metrics.appended(Error(session_id="s", code="llm_unavailable", message="down", source="dialogue"))
    assert sample("vagent_interruptions_total", reason="barge_in") == barge + 1
    assert sample("vagent_errors_total", code="llm_unavailable", source="dialogue") == errors + 1


def test_open_ended_labels_keep_their_first_values_and_fold_the_rest() -> None:
    names = metrics._Bounded()
    kept = [names(f"tool{i}") for i in range(metrics.MAX_VALUES)]
    assert kept == [f"tool{i}" for i in range(metrics.MAX_VALUES)]
    assert names("one_too_many") == "other"
    assert names("tool0") == "tool0"  # a value seen before keeps its name


async def test_metrics_off_observe_nothing_and_the_edge_has_no_metrics(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = api_config()
    config.telemetry = msgspec.structs.replace(config.telemetry, metrics=False)
    async with serve_api(module_nats.url, tmp_path, config) as api:
        assert not metrics.enabled()
        assert (await api.client.get("/metrics")).status_code == 404
        interrupted = sample("vagent_interruptions_total", reason="abort")
        metrics.appended(TurnInterrupted(session_id="s", reason="abort"))
        assert sample("vagent_interruptions_total", reason="abort") == interrupted
    (tmp_path / "on").mkdir()
    async with serve_api(module_nats.url, tmp_path / "on") as api:
        answer = await api.client.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        assert "# TYPE vagent_turn_stage_seconds histogram" in answer.text


def exposed() -> set[str]:
    """The name of every sample vagent's metrics can expose."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = set()
    for family in REGISTRY.collect():
        if family.name in metrics.METRIC_NAMES:
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_of_the_dashboard_is_one_vagent_exposes() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    used = {name for q in queries for name in re.findall(r"\bvagent_\w+", q)}
    assert used <= exposed(), used - exposed()
    # The panels the docs promise: stage percentiles, turns, interruptions, errors, sessions,
    # tokens and cost, pending events and dead letters.
    for name in ("vagent_turn_stage_seconds_bucket", "vagent_turns_total", "vagent_interruptions_total",
                 "vagent_errors_total", "vagent_sessions_active", "vagent_llm_tokens_total",
                 "vagent_llm_cost_total", "vagent_consumer_pending", "vagent_dead_letters"):
        assert name in used, name
    assert "docs/grafana/vagent.json" in (ROOT / "docs" / "metrics.md").read_text()


def test_the_metric_names_the_docs_list_are_the_exposed_ones() -> None:
    documented = set(re.findall(r"^\| `(vagent_\w+)` \|", (ROOT / "docs" / "metrics.md").read_text(),
                                re.M))
    declared = {name + ("_total" if any(f.name == name and f.type == "counter"
                                        for f in REGISTRY.collect()) else "")
                for name in metrics.METRIC_NAMES}
    assert documented == declared
