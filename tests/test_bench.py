"""The bus benchmark runs end to end; its speed goals are reported, never asserted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benches.bus import RESULT_KEYS, bench_bus, print_report
from bus.server import EmbeddedServer


async def test_bench_bus_reports_every_figure(nats_server: EmbeddedServer, capsys) -> None:  # type: ignore[no-untyped-def]
    results = await bench_bus(nats_server.url, events=200, hops=50)
    assert set(RESULT_KEYS) <= results.keys()
    assert results["cores"] >= 1
    assert results["publish_awaited_per_s"] > 0
    assert results["publish_pipelined_per_s"] > 0
    assert 0 < results["hop_p50_ms"] <= results["hop_p95_ms"] <= results["hop_p99_ms"]
    assert results["hop_mean_ms"] > 0
    assert math.isnan(results["sync_always"])  # an external server's fsync policy is unknown
    print_report(results)
    assert "one hop" in capsys.readouterr().out


async def test_bench_dialogue_times_a_conversation_whose_history_grows(
        nats_server: EmbeddedServer, capsys) -> None:  # type: ignore[no-untyped-def]
    from benches.dialogue import bench_dialogue
    from benches.dialogue import print_report as print_dialogue

    results = await bench_dialogue(nats_server.url, turns=5, conversation=True)
    assert results["turns"] == 5 and results["sessions"] == "one conversation"
    assert 0 < results["first_delta_p50_ms"] <= results["first_delta_p95_ms"]
    assert results["first_delta_p50_ms"] <= results["first_sentence_p50_ms"]
    entries = await _bench_sessions(nats_server)
    assert max(entries.values()) >= 5 * 2  # every turn in one session: its log grew
    print_dialogue(results)
    assert "one conversation" in capsys.readouterr().out


async def _bench_sessions(nats_server: EmbeddedServer) -> dict[str, int]:
    from bus.client import Bus
    from bus.log import read

    bus = await Bus.connect(nats_server.url)
    try:
        counts: dict[str, int] = {}
        async for entry in read(bus, "SESSIONS", "vagent.session.*.evt.>", idle_timeout=0.5):
            if entry.subject.startswith("vagent.session.bench-"):
                session = entry.subject.split(".")[2]
                counts[session] = counts.get(session, 0) + 1
        return counts
    finally:
        await bus.close()


async def test_bench_speech_grades_each_engine_and_voice_on_the_test_set(
        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from benches.speech import RESULT_KEYS, bench_speech, print_report

    # One clip per language: its own embedded server (with read models, so the actor heeds
    # each session's language as it would for a device's hello).
    results = await bench_speech(None, names=["weather"], data_dir=tmp_path)
    assert set(RESULT_KEYS) <= results.keys()
    assert results["clips"] == {"en": 1, "zh": 1}
    asr = {(r["engine"], r["language"]): r for r in results["asr"]}
    assert set(asr) == {("moonshine", "en"), ("whisper", "zh"), ("whisper", "en"), ("moonshine", "zh")}
    assert asr["moonshine", "en"]["metric"] == "WER" and asr["whisper", "zh"]["metric"] == "CER"
    assert asr["moonshine", "en"]["error_rate"] <= 0.15 and asr["whisper", "en"]["error_rate"] <= 0.3
    assert asr["whisper", "zh"]["error_rate"] <= 0.15
    assert asr["moonshine", "zh"]["error_rate"] > 1.0  # tiny-en cannot hear Mandarin: the baseline
    assert all(r["rtf"] > 0 and r["transcribe_p50_ms"] > 0 and r["rss_added_mib"] > 0
               for r in asr.values())
    assert results["identify"] == results["identify"] | {"clips": 2, "correct": 2, "accuracy": 1.0}
    actor = {r["language"]: r for r in results["actor"]}
    assert (actor["en"]["engine"], actor["zh"]["engine"]) == ("moonshine", "whisper")
    assert actor["en"]["error_rate"] <= 0.15 and actor["zh"]["error_rate"] <= 0.15, results["actor"]
    # The VAD waits for silence after the speech; the transcript comes after that.
    assert all(0 < r["speech_stopped_p50_ms"] <= r["final_p50_ms"] <= r["final_p95_ms"]
               for r in actor.values())
    tts = {r["provider"]: r for r in results["tts"]}
    assert [(r["provider"], r["language"], r["sentences"]) for r in results["tts"]] == [
        ("piper", "en", 1), ("kokoro", "zh", 1)]
    assert all(r["first_audio_p50_ms"] > 0 and r["rtf"] > 0 and r["rss_added_mib"] > 0
               for r in tts.values())
    assert tts["piper"]["metric"] == "WER" and tts["kokoro"]["metric"] == "CER"
    # Each voice heard back by its language's recogniser: moonshine, whisper.
    assert tts["piper"]["readback_error_rate"] <= 0.15, tts["piper"]["heard"]
    assert tts["kokoro"]["readback_error_rate"] <= 0.15, tts["kokoro"]["heard"]
    assert results["rss_peak_mib"] >= results["rss_start_mib"] > 0
    print_report(results)
    out = capsys.readouterr().out
    assert "End of speech → transcript" in out and "en_US-joe-medium" in out and "jm_kumo" in out


async def test_bench_turns_grades_each_detector_on_the_labelled_set(
        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from benches.turns import DETECTORS, RESULT_KEYS, bench_turns, print_report

    # English only (no whisper to load): a complete sentence, a paused one, an "mhm" and a
    # request over the assistant, through both detectors on an embedded server.
    names = ["complete_en1", "paused_en1", "backchannel_en1", "barge_in_en1"]
    results = await bench_turns(None, names=names, data_dir=tmp_path, concurrency=len(names))
    assert set(RESULT_KEYS) <= results.keys()
    assert results["items"] == {"complete": 1, "paused": 1, "backchannel": 1, "barge_in": 1}
    assert [r["detector"] for r in results["detectors"]] == list(DETECTORS)
    for run in results["detectors"]:
        rows = {r["name"]: r for r in run["items"]}
        assert rows.keys() == set(names)
        # The complete sentence is one utterance, judged over after its labelled end (in audio
        # time: within the longest wait for an incomplete one).
        complete = rows["complete_en1"]
        assert complete["utterances"] == 1 and not complete["cut"], complete
        assert 0 <= complete["eot_ms"] < 3000 and complete["eot_wall_ms"] > 0, complete
        assert run["eot"]["n"] == 1 and run["eot"]["audio_ms"]["mean"] == complete["eot_ms"]
        assert run["false_cutoff"]["n"] == 1 and run["false_cutoff"]["rate"] in (0.0, 1.0)
        assert run["backchannel"]["n"] == 1 and run["echo"]["n"] == 0 and run["echo"]["rate"] is None
        # A three-second request over the assistant stops it, after the request began (how
        # soon depends on the machine: not asserted).
        barge = rows["barge_in_en1"]
        assert run["barge_in"]["stopped"] == 1 and barge["stop_ms"] >= 0, barge
        assert sum(run["ends"].values()) >= 3  # at least one end per spoken item
        assert set(run["ends"]) <= {"silence", "model", "max_wait", "manual", "max_length"}
    # The turn model timed on the two spoken user items, three rounds each.
    model = results["turn_model"]
    assert model["decisions"] == 6 and model["cpu_ms"] > 0 and model["wall_ms"] > 0, model
    print_report(results)
    out = capsys.readouterr().out
    assert "false cut-offs" in out and "barge-in stop latency" in out and "smart_turn" in out


async def test_bench_dialogue_compares_telemetry_off_metrics_and_tracing(
        nats_server: EmbeddedServer, capsys) -> None:  # type: ignore[no-untyped-def]
    from benches.dialogue import bench_telemetry, print_telemetry_report
    from telemetry import metrics, tracing

    results = await bench_telemetry(nats_server.url, turns=4)
    modes = {mode["mode"]: mode for mode in results["modes"]}
    assert list(modes) == ["off", "metrics", "metrics + tracing"]
    assert all(mode["turns"] == 4 and mode["cpu_per_turn_ms"] > 0 for mode in modes.values())
    assert modes["off"]["added_p50_ms"] == modes["off"]["added_paired_ms"] == 0
    assert modes["metrics + tracing"]["added_p50_ms"] == pytest.approx(
        modes["metrics + tracing"]["first_delta_p50_ms"] - modes["off"]["first_delta_p50_ms"])
    # Three spans a turn (the edge's, the dialogue's, the LLM call's), from the turns with
    # tracing on alone (one warm-up turn of three among them): the receiver got every one.
    assert results["spans_exported"] == 3 * (4 + 1)
    assert not tracing.enabled() and metrics.enabled()  # left as the process had them
    print_telemetry_report(results)
    out = capsys.readouterr().out
    assert "metrics + tracing" in out and "goal: telemetry adds ≤ 0.3 ms to p50" in out
