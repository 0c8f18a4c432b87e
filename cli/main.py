"""The `vagent` command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from functools import cache, partial
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvloop

from actors.registry import ACTORS
from bus.client import Bus
from bus.errors import BusError, Unreachable
from cli.assistant_options import settings_options
from settings.config import Config
from settings.paths import data_dir as resolve_data_dir

if TYPE_CHECKING:
    from cli.accounts import Admin
    from hosting.stack import Located
    from schemas import Role

app = typer.Typer(help="vagent: an event-sourced voice-agent backend on NATS JetStream.",
                  no_args_is_help=True, add_completion=False)
actor_app = typer.Typer(help="Run one actor on its own.", no_args_is_help=True)
projections_app = typer.Typer(help="The read models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print measured numbers.", no_args_is_help=True)
users_app = typer.Typer(help="Accounts: list, create, lock, unlock and give a role.", no_args_is_help=True)
assistants_app = typer.Typer(help="Assistants: list, show, create and update.", no_args_is_help=True)
devices_app = typer.Typer(help="Bound devices.", no_args_is_help=True)
session_app = typer.Typer(help="One session: its timeline and latencies, its export.",
                          no_args_is_help=True)
docs_app = typer.Typer(help="The knowledge base: add, list, search and delete documents.",
                       no_args_is_help=True)
app.add_typer(actor_app, name="actor")
app.add_typer(projections_app, name="projections")
app.add_typer(bench_app, name="bench")
app.add_typer(users_app, name="users")
app.add_typer(assistants_app, name="assistants")
app.add_typer(devices_app, name="devices")
app.add_typer(session_app, name="session")
app.add_typer(docs_app, name="docs")

NatsOpt = Annotated[str | None, typer.Option("--nats", envvar="VAGENT_NATS_URL",
                                             help="NATS URL(s), comma-separated for a cluster.")]


DataOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="VAGENT_DATA_DIR",
                                              help="Where the embedded server and read models keep data.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Whole ids and texts, however wide (default: "
                                                      "fit 100 columns).")]
AssistantOpt = Annotated[str | None, typer.Option(
    "--assistant", help="A new session talks to this assistant (its id; default: the system's).")]
class Spoken(StrEnum):
    en = "en"
    zh = "zh"


LanguageOpt = Annotated[Spoken | None, typer.Option(
    "--language", help="The language you speak, for a new session with the system's assistant (whose "
         "language is nobody's choice); another assistant speaks its own.")]
T = TypeVar("T")


@cache
def read_settings() -> Config:
    """The settings file, read once: every command that needs settings gets them here."""
    from settings.config import load

    return load()


def run(main: Coroutine[Any, Any, T], log_level: str | None = None) -> T:
    from hosting.logs import setup

    setup(log_level)
    try:
        return uvloop.run(main)
    except Unreachable as exc:
        typer.secho(f"error: {exc} — start the stack with `vagent up` (or pass --nats)",
                    fg="red", err=True)
        raise typer.Exit(1) from None
    except BusError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def where(nats: str | None, data_dir: Path | None = None) -> Located:
    """The stack a command talks to (hosting.stack.locate), named on stderr when it is not
    the default one. Looking creates nothing: the data directory is whatever it names."""
    from hosting.stack import locate

    found = locate(nats, data_dir)
    if found.announce:
        typer.echo(found.announce, err=True)
    return found


async def with_bus(nats: str | None, fn: Callable[[Bus], Awaitable[T]], name: str = "vagent-cli") -> T:
    bus = await Bus.connect(nats, name=name)
    try:
        return await fn(bus)
    finally:
        await bus.close()


@app.command()
def up(nats: NatsOpt = None, data_dir: DataOpt = None,
       port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
       actors: Annotated[str, typer.Option(help="Comma-separated actors to run.")] = ",".join(ACTORS),
       edge_port: Annotated[int | None, typer.Option(
           "--edge-port", envvar="VAGENT_EDGE_PORT", help="Port of the API (default: edge.port, 8000).")
           ] = None,
       ) -> None:
    """Start everything: NATS (embedded unless --nats), all actors, the read models."""
    from cli.up import up as run_up

    names = [a.strip() for a in actors.split(",") if a.strip()]
    unknown = [a for a in names if a not in ACTORS]
    if unknown:
        typer.secho(f"unknown actor(s): {', '.join(unknown)}; known: {', '.join(ACTORS)}",
                    fg="red", err=True)
        raise typer.Exit(2)
    run(run_up(nats=nats, port=port, data_dir=resolve_data_dir(data_dir), actors=names,
               config=read_settings(), edge_port=edge_port))


@app.command()
def edge(nats: NatsOpt = None, data_dir: DataOpt = None,
         host: Annotated[str | None, typer.Option(help="Address to listen on (default: edge.host).")] = None,
         port: Annotated[int | None, typer.Option(
             envvar="VAGENT_EDGE_PORT", help="Port to listen on (default: edge.port, 8000).")] = None,
         ) -> None:
    """Serve the API on its own (the read models are served by `vagent up` or
    `vagent projections serve`)."""
    from cli.edge import serve_edge

    run(serve_edge(nats, resolve_data_dir(data_dir), read_settings(), host, port))


@actor_app.command("run")
def actor_run(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(ACTORS)}")],
              nats: NatsOpt = None, data_dir: DataOpt = None,
              metrics_port: Annotated[int | None, typer.Option(
                  "--metrics-port", help="Serve Prometheus metrics at /metrics on this port "
                                         "(on edge.host; off unless given).")] = None) -> None:
    """Run one actor alone against a NATS server."""
    if name not in ACTORS:
        typer.secho(f"unknown actor {name!r}; known: {', '.join(ACTORS)}", fg="red", err=True)
        raise typer.Exit(2)
    at = where(nats, data_dir)
    run(_actor_run(name, at.nats_url, read_settings(), resolve_data_dir(at.data_dir), metrics_port))


async def _actor_run(name: str, nats: str | None, config: Config, data_dir: Path,
                     metrics_port: int | None = None) -> None:
    from actors.runtime import ActorHost
    from hosting.loop import Host
    from telemetry import metrics, tracing

    async with Host() as parts:
        if tracing.setup(config.telemetry.otlp_endpoint, config.telemetry.service_name, ("actors",)):
            parts.on_stop(partial(asyncio.to_thread, tracing.shutdown))  # last: every span ended
        bus = await Bus.connect(nats, name=f"vagent-actor-{name}")
        parts.on_stop(bus.close)
        await bus.declare()
        host = ActorHost(bus, [name], config, data_dir)
        await host.start()
        parts.on_stop(host.stop)
        if metrics_port is not None and config.telemetry.metrics:
            served = metrics.serve(metrics_port, config.edge.host)
            parts.on_stop(partial(asyncio.to_thread, served.stop))
            print(f"actor {name}: metrics at http://{config.edge.host}:{served.port}/metrics",
                  flush=True)
        print(f"actor {name} running on {bus.url}; Ctrl-C stops it", flush=True)
        await parts.wait(host.wait())


@app.command()
def tail(subject: Annotated[str, typer.Argument(help="Subject or wildcard, e.g. 'vagent.session.s1.>'")],
         nats: NatsOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
         from_start: Annotated[bool, typer.Option("--from-start",
                                                  help="Replay the stored log first.")] = False,
         limit: Annotated[int | None, typer.Option(help="Stop after this many lines.")] = None,
         audio: Annotated[bool, typer.Option("--audio", help="Also list audio frames.")] = False
         ) -> None:
    """Print the events on SUBJECT as they flow (decoded); audio frames with --audio."""
    from cli.tail import tail as run_tail

    try:
        run(with_bus(where(nats).nats_url, lambda bus: run_tail(
            bus, subject, as_json=as_json, from_start=from_start, limit=limit, audio=audio)))
    except KeyboardInterrupt:
        pass


@app.command()
def say(text: Annotated[str | None, typer.Argument(metavar="TEXT", help="What the user types.")] = None,
        session: Annotated[str | None, typer.Option(
            "--session", "-s", help="Session id: the same id continues the conversation "
                                    "(default: a new session, its id printed on stderr).")] = None,
        audio: Annotated[Path | None, typer.Option(
            "--audio", help="Say this WAV instead (any rate, mono or stereo; up to 30 s): "
                            "streamed at real time as a microphone would.")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="With --audio: write the spoken answer here (16 kHz mono WAV).")] = None,
        assistant: AssistantOpt = None, language: LanguageOpt = None,
        nats: NatsOpt = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0) -> None:
    """Send TEXT (or with --audio, a recorded utterance) as the user of a session and print
    the streamed answer."""
    from cli.say import SayError, opening
    from cli.say import say as run_say
    from hosting.logs import console
    from schemas import check_token, new_id

    def usage_error(message: str) -> typer.Exit:
        typer.secho(f"error: {message}", fg="red", err=True)
        return typer.Exit(2)

    if (text is None) == (audio is None):
        raise usage_error("say TEXT, or --audio FILE, one of the two")
    if out is not None and audio is None:
        raise usage_error("--out needs --audio")
    if out is not None and not out.parent.is_dir():
        raise usage_error(f"--out {out}: no directory {out.parent}")
    if session is not None:
        try:
            check_token("session id", session)  # before connecting: it must be a subject token
        except ValueError as exc:
            raise usage_error(str(exc)) from None
    speech = b""
    if audio is not None:
        from audio.wavfile import AudioFileError, read_wav
        from cli.say_audio import MAX_SECONDS

        try:
            speech = read_wav(audio, MAX_SECONDS)  # a bad file publishes nothing
        except AudioFileError as exc:
            raise usage_error(str(exc)) from None
    if session is None:
        session = f"say-{new_id()}"
        typer.echo(f"vagent: session {session} (--session {session} continues it)", err=True)
    sid = session

    async def main(bus: Bus) -> object:
        start = await opening(bus, assistant, language and language.value)
        if audio is None:
            assert text is not None
            return await run_say(bus, sid, text, timeout=timeout, opening=start)
        from cli.say_audio import say_audio

        return await say_audio(bus, sid, speech, out=out, timeout=timeout, opening=start)

    try:
        run(with_bus(where(nats).nats_url, main))
    except SayError as exc:
        console.end_line()  # the answer's line, if one was begun
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if out is not None:
        typer.echo(f"vagent: the spoken answer is in {out}", err=True)


@app.command()
def chat(session: Annotated[str | None, typer.Option("--session", "-s",
                                                     help="Continue this session.")] = None,
         assistant: AssistantOpt = None, language: LanguageOpt = None,
         nats: NatsOpt = None,
         timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 120.0
         ) -> None:
    """An interactive chat in the terminal (streamed answers, tool calls shown dimmed)."""
    from cli.chat import chat as run_chat
    from cli.say import SayError, opening

    async def main(bus: Bus) -> None:
        start = await opening(bus, assistant, language and language.value)
        await run_chat(bus, session, timeout, opening=start)

    try:
        run(with_bus(where(nats).nats_url, main), log_level="WARNING")
    except KeyboardInterrupt:  # Ctrl-C with piped input; a terminal's is the prompt's own
        pass
    except SayError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command("echo-llm")
def echo_llm(port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 8080,
             token_delay: Annotated[float, typer.Option(help="Seconds between tokens.")] = 0.05,
             first_token_delay: Annotated[float, typer.Option(
                 help="Seconds before the first token (a cloud model's time to first token).")] = 0.0
             ) -> None:
    """An OpenAI-compatible server that echoes: try vagent with no model at all."""
    from devservers.echo_llm import serve

    serve(port, token_delay, first_token_delay)


@app.command()
def streams(nats: NatsOpt = None, wide: WideOpt = False) -> None:
    """Streams, message counts, consumers (pending / awaiting ack) and dead letters."""
    from cli.inspect import show_streams

    run(with_bus(where(nats).nats_url, lambda bus: show_streams(bus, wide)))


@app.command()
def sessions(nats: NatsOpt = None, data_dir: DataOpt = None,
             user: Annotated[str | None, typer.Option(
                 "--user", help="Only this owner's (email or user id).")] = None,
             assistant: Annotated[str | None, typer.Option(
                 "--assistant", help="Only sessions with this assistant id.")] = None,
             since: Annotated[str | None, typer.Option(
                 help="Started since: 30m, 2h, 7d, or a date/time (2025-01-31, 2025-01-31T09:00).")
                 ] = None,
             limit: Annotated[int, typer.Option(help="Newest sessions to list.")] = 50,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                                ] = False, wide: WideOpt = False) -> None:
    """Sessions from the read model: when, owner, assistant, turns, median latency, end."""
    from cli.sessions import list_sessions

    try:
        at = where(nats, data_dir)
        run(list_sessions(at.nats_url, at.data_dir, user=user, assistant=assistant,
                          since=since, limit=limit, as_json=as_json, wide=wide), log_level="WARNING")
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


class ByArg(StrEnum):
    day = "day"
    assistant = "assistant"
    model = "model"
    user = "user"
    transport = "transport"


@app.command()
def stats(nats: NatsOpt = None, data_dir: DataOpt = None,
          since: Annotated[str, typer.Option(
              help="From: 30m, 24h, 7d ago, or a date/time (2025-01-31, 2025-01-31T09:00).")] = "7d",
          by: Annotated[ByArg, typer.Option(help="What a row is.")] = ByArg.day,
          user: Annotated[str | None, typer.Option(
              "--user", help="Only this owner's sessions (email or user id).")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="The API's JSON answer instead of a table.")
                             ] = False, wide: WideOpt = False) -> None:
    """Usage, latency and cost from the read models: sessions, turns, audio minutes, tokens,
    cost (`[[prices]]`), stage latency percentiles, interruptions, errors, tool calls."""
    from cli.stats import show_stats

    try:
        at = where(nats, data_dir)
        run(show_stats(at.nats_url, at.data_dir, read_settings(), since=since, by=by.value, user=user,
                       as_json=as_json, wide=wide), log_level="WARNING")
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


SidArg = Annotated[str, typer.Argument(metavar="SID", help="The session id.")]


@session_app.command("show")
def session_show(session_id: SidArg, nats: NatsOpt = None,
                 as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
                 wide: WideOpt = False) -> None:
    """A session's timeline from its log, with per-stage latency bars, tool calls,
    interruptions and errors."""
    from cli.sessions import show_session

    run(with_bus(where(nats).nats_url, lambda bus: show_session(bus, session_id, as_json, wide)),
        log_level="WARNING")


@session_app.command("export")
def session_export(session_id: SidArg, nats: NatsOpt = None,
                   wav: Annotated[Path | None, typer.Option(
                       "--wav", help="Write the audio here: user left, assistant right (16 kHz).")
                       ] = None,
                   as_json: Annotated[bool, typer.Option("--json", help="The events as JSON lines.")
                                      ] = False) -> None:
    """Export a session: its events as JSON lines (--json) or its audio as a WAV (--wav)."""
    from cli.sessions import export_json
    from replay.wav import export_wav

    if (wav is None) == (not as_json):
        typer.secho("error: give --wav FILE or --json", fg="red", err=True)
        raise typer.Exit(2)
    url = where(nats).nats_url
    if as_json:
        run(with_bus(url, lambda bus: export_json(bus, session_id)), log_level="WARNING")
        return
    assert wav is not None
    done = run(with_bus(url, lambda bus: export_wav(bus, session_id, wav)), log_level="WARNING")
    print(f"wrote {wav}: {done.duration_ms / 1000:.1f} s, {done.utterances} user utterance(s) on the "
          f"left channel, {done.answers} spoken answer(s) on the right")
    if done.unrecorded:
        print(f"note: {done.unrecorded} spoken answer(s) have no recording (logged before vagent kept "
              "them, or not stored); their text is in `vagent session show`")


@app.command()
def replay(session_id: SidArg, nats: NatsOpt = None, data_dir: DataOpt = None,
           llm_base_url: Annotated[str | None, typer.Option(
               "--llm-base-url", help="An OpenAI-compatible server for the replay's LLM.")] = None,
           llm_model: Annotated[str | None, typer.Option(
               "--llm-model", help="The model the replay asks for.")] = None,
           assistant: Annotated[str | None, typer.Option(
               "--assistant", help="Replay with this assistant (its persona, voice, tools) instead "
                                   "of the session's.")] = None,
           tts: Annotated[bool, typer.Option(
               "--tts/--no-tts", help="Synthesize the answers (first-audio latency).")] = True,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for each turn.")] = 120.0,
           as_json: Annotated[bool, typer.Option("--json", help="A machine-readable diff.")] = False
           ) -> None:
    """Re-run a session's user inputs (typed text, recorded utterances) through today's actors
    in an isolated NATS of its own, then show each turn side by side: transcript, answer, tool
    calls, latencies. Nothing is written to the original session."""
    from cli.replay import print_report
    from replay.engine import ReplayError, replay_session
    from settings.llm import wants_local_llm, with_local_llm

    at = where(nats, data_dir)
    config = read_settings()
    if at.stack is not None and at.stack.llm_url and wants_local_llm(config, ["dialogue"]):
        # The model the stack's dialogue answers with, as `vagent up` hands it to its actors.
        config = with_local_llm(config, at.stack.llm_url)
    try:
        report = run(with_bus(at.nats_url, lambda bus: replay_session(
            bus, session_id, config=config, llm_base_url=llm_base_url, llm_model=llm_model,
            assistant_id=assistant, tts=tts, timeout=timeout,
            knowledge_dir=at.data_dir)), log_level="WARNING")
    except ReplayError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    print_report(report, as_json)


@app.command("eval")
def eval_suite(
        args: Annotated[list[str] | None, typer.Argument(
            metavar="SUITE.yaml | SID...",
            help="The suite to run; with --from-sessions, the sessions.")] = None,
        llm: Annotated[str | None, typer.Option(
            "--llm", help="Answer with this LLM instead of the suite's: echo, local, default (the "
                          "configured one) or an OpenAI-compatible base URL.")] = None,
        llm_model: Annotated[str | None, typer.Option(
            "--llm-model", help="The model it is asked for.")] = None,
        judge_llm: Annotated[str | None, typer.Option(
            "--judge-llm", help="Who answers `judge` and `similar_to`: echo, local or a base URL "
                                "(default: the configured [llm], if any).")] = None,
        judge_model: Annotated[str | None, typer.Option("--judge-model", help="The judge's model.")] = None,
        junit: Annotated[Path | None, typer.Option(
            "--junit", help="Also write the result as JUnit XML here (one test case per turn).")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 120.0,
        from_sessions: Annotated[bool, typer.Option(
            "--from-sessions", help="Write a suite of recorded sessions instead (needs --out).")] = False,
        since: Annotated[str | None, typer.Option(
            help="With --from-sessions: also the sessions started since (30m, 2h, 7d or a date).")] = None,
        limit: Annotated[int, typer.Option(help="With --since: at most this many sessions.")] = 50,
        out: Annotated[Path | None, typer.Option(
            "--out", help="With --from-sessions: the suite file.")] = None,
        nats: NatsOpt = None, data_dir: DataOpt = None, wide: WideOpt = False) -> None:
    """Run an evaluation suite (scripted conversations, typed or spoken, with expectations per
    turn) through a temporary isolated stack; exit 1 when an expectation fails. With
    --from-sessions, turn recorded sessions into a suite. docs/evaluations.md has the format."""
    def fail(message: str, code: int = 2) -> typer.Exit:
        typer.secho(f"error: {message}", fg="red", err=True)
        return typer.Exit(code)

    names = args or []
    if from_sessions:
        from cli.eval import write_suite
        from evals.from_sessions import FromSessionsError

        if out is None:
            raise fail("--from-sessions needs --out SUITE.yaml")
        if not names and not since:
            raise fail("--from-sessions: name the sessions, or --since")
        at = where(nats, data_dir)
        try:
            made = run(with_bus(at.nats_url, lambda bus: write_suite(
                bus, at.data_dir, names, since, limit, out, out.stem)), log_level="WARNING")
        except (FromSessionsError, ValueError) as exc:
            raise fail(str(exc), 1) from None
        for note in made.skipped:
            typer.echo(f"skipped {note}", err=True)
        print(f"wrote {out}: {made.conversations} conversation(s), {made.turns} turn(s); "
              f"run it with `vagent eval {out}`")
        return
    if len(names) != 1:
        raise fail("eval SUITE.yaml: one suite (or --from-sessions SID...)")
    from evals.suite import SuiteError, load_suite

    try:
        suite = load_suite(Path(names[0]))  # before anything starts: a bad suite is refused at once
    except SuiteError as exc:
        raise fail(str(exc)) from None
    from cli.eval import print_result, progress
    from evals.engine import run_suite
    from evals.junit import write_junit
    from evals.llms import EvalLLMError
    from settings.llm import wants_local_llm, with_local_llm

    at = where(nats, data_dir)
    config = read_settings()
    if at.stack is not None and at.stack.llm_url and wants_local_llm(config, ["dialogue"]):
        # The model the running stack already serves: no second llama-server on the same cores.
        config = with_local_llm(config, at.stack.llm_url)
    try:
        result = run(run_suite(suite, config, at.data_dir, llm=llm, llm_model=llm_model, judge=judge_llm,
                               judge_model=judge_model, timeout=timeout, on_turn=progress),
                     log_level="WARNING")
    except EvalLLMError as exc:
        raise fail(str(exc)) from None
    print_result(result, wide)
    if junit is not None:
        write_junit(result, junit)
        typer.echo(f"vagent: JUnit XML in {junit}", err=True)
    if not result.passed:
        raise typer.Exit(1)


@projections_app.command("rebuild")
def projections_rebuild(nats: NatsOpt = None, data_dir: DataOpt = None) -> None:
    """Rebuild every read model from the streams' first event."""
    from cli.inspect import rebuild_projections

    at = where(nats, data_dir)
    run(with_bus(at.nats_url, lambda bus: rebuild_projections(bus, resolve_data_dir(at.data_dir))))


@projections_app.command("serve")
def projections_serve(nats: NatsOpt = None, data_dir: DataOpt = None) -> None:
    """Keep the read models up to date and answer their queries (what `vagent up` runs)."""
    from cli.edge import serve_projections

    run(serve_projections(nats, resolve_data_dir(data_dir)))


@app.command()
def health(nats: NatsOpt = None,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           actors: Annotated[str, typer.Option(
               help="Comma-separated actors expected alive (as given to `vagent up --actors`); "
                    "the projections always are.")] = ",".join(ACTORS)) -> None:
    """Is NATS reachable and is every expected actor alive? Exit code 0 if so."""
    from cli.inspect import show_health

    names = [a.strip() for a in actors.split(",") if a.strip()]
    unknown = [a for a in names if a not in ACTORS]
    if unknown:
        typer.secho(f"unknown actor(s): {', '.join(unknown)}; known: {', '.join(ACTORS)}",
                    fg="red", err=True)
        raise typer.Exit(2)
    if not run(show_health(where(nats).nats_url, as_json, names)):
        raise typer.Exit(1)


@app.command()
def doctor(nats: NatsOpt = None, data_dir: DataOpt = None,
           port: Annotated[int, typer.Option("--port", "--nats-port",
                                             help="Port of the embedded nats-server.")] = 4222,
           actors: Annotated[str, typer.Option(help="Comma-separated actors to run.")] = ",".join(ACTORS),
           edge_port: Annotated[int | None, typer.Option(
               "--edge-port", envvar="VAGENT_EDGE_PORT", help="Port of the API (default: edge.port, 8000).")
               ] = None,
           dev: Annotated[bool, typer.Option(
               "--dev", help="Also require what the test suite needs (uv, Chromium).")] = False,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Can `vagent up` start here? One line per check, with a fix under each failure; takes
    `vagent up`'s options so it checks what you will start. Exit code 0 if nothing failed."""
    from cli.doctor import Options, exit_code, render, run_checks, to_json

    checks = run_checks(Options(  # doctor changes nothing: the directory is not created
        data_dir=resolve_data_dir(data_dir, create=False), nats_port=port, nats_url=nats, edge_port=edge_port,
        actors=tuple(a.strip() for a in actors.split(",") if a.strip()), dev=dev))
    print(to_json(checks) if as_json else render(checks, color=sys.stdout.isatty()))
    raise typer.Exit(exit_code(checks))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
UserOpt = Annotated[str | None, typer.Option("--user", help="Only this user's (email or user id).")]
WhoArg = Annotated[str, typer.Argument(metavar="EMAIL_OR_ID", help="The user's email or user id.")]


def admin(nats: str | None, data_dir: Path | None, fn: Callable[[Admin], Awaitable[None]]) -> None:
    """Run an account command; a refusal (unknown user, weak password, …) is printed in red."""
    from cli.accounts import Admin, AdminError
    from domain.errors import DomainError

    config, at = read_settings(), where(nats, data_dir)
    try:
        run(with_bus(at.nats_url, lambda bus: fn(Admin(bus, at.data_dir, config))), log_level="WARNING")
    except (DomainError, AdminError) as exc:
        known = exc.details.get("known") if isinstance(exc, DomainError) else None
        typer.secho(f"error: {exc}" + (f" (known: {', '.join(known)})" if known else ""), fg="red", err=True)
        raise typer.Exit(1) from None


@users_app.command("list")
def users_list(nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
               wide: WideOpt = False) -> None:
    """Every account (from the read model)."""
    from cli.accounts import list_users

    admin(nats, data_dir, lambda a: list_users(a, as_json, wide))


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="The new account's email.")],
    password: Annotated[str | None, typer.Option(
        help="The password (visible in the process list: prefer the prompt or --password-stdin).")
        ] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from stdin's first line.")
                              ] = False,
    display_name: Annotated[str | None, typer.Option("--name", help="A display name.")] = None,
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create an account (with its default assistant), as the API's registration does."""
    from cli.accounts import create_user

    if password is not None and password_stdin:
        typer.secho("error: give --password or --password-stdin, not both", fg="red", err=True)
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    admin(nats, data_dir, lambda a: create_user(a, email, password or "",
                                        display_name, as_json))


@users_app.command("lock")
def users_lock(who: WhoArg,
               minutes: Annotated[float | None, typer.Option(
                   min=0.01, help="Lock for this many minutes (default: until unlocked).")] = None,
               nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Lock an account: no login, and every token issued so far is revoked."""
    from cli.accounts import lock_user

    admin(nats, data_dir, lambda a: lock_user(a, who, minutes, as_json))


@users_app.command("unlock")
def users_unlock(who: WhoArg, nats: NatsOpt = None, data_dir: DataOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Unlock an account (also clears its failed-login count)."""
    from cli.accounts import unlock_user

    admin(nats, data_dir, lambda a: unlock_user(a, who, as_json))


class RoleArg(StrEnum):
    user = "user"
    operator = "operator"


@users_app.command("role")
def users_role(who: WhoArg,
               role: Annotated[RoleArg, typer.Argument(help="operator: reads every user's analytics.")],
               nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Give an account a role: `operator` (everyone's usage and cost in the API) or `user`."""
    from cli.accounts import set_role

    chosen: Role = "operator" if role is RoleArg.operator else "user"
    admin(nats, data_dir, lambda a: set_role(a, who, chosen, as_json))


@assistants_app.command("list")
def assistants_list(user: UserOpt = None, nats: NatsOpt = None, data_dir: DataOpt = None,
                    as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """Every assistant, or one user's."""
    from cli.accounts import list_assistants

    admin(nats, data_dir, lambda a: list_assistants(a, user, as_json, wide))


@assistants_app.command("create")
@settings_options
def assistants_create(
    user: Annotated[str, typer.Option("--user", help="The owner (email or user id).")],
    settings: dict[str, Any],
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create an assistant for a user, checked as the API checks a request.

    Each setting is an option; one left out keeps its default."""
    from cli.accounts import create_assistant

    admin(nats, data_dir, lambda a: create_assistant(a, user, settings, as_json))


@assistants_app.command("update")
@settings_options
def assistants_update(
    assistant_id: Annotated[str, typer.Argument(metavar="ASSISTANT_ID", help="The assistant's id.")],
    settings: dict[str, Any],
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Change some settings of an assistant (any user's, or the system's), checked as its
    owner's PATCH is; prints it as `show` does.

    Each setting is an option; one left out keeps its value. A turn setting given as
    `default` goes back to the configuration's (its asr.turn section); the others keep theirs."""
    from cli.accounts import update_assistant

    admin(nats, data_dir, lambda a: update_assistant(a, assistant_id, settings, as_json))


@assistants_app.command("show")
def assistants_show(
    assistant_id: Annotated[str, typer.Argument(metavar="ASSISTANT_ID", help="The assistant's id.")],
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """One assistant's settings, and the turn-taking in force: each turn setting, set on the
    assistant or else the configuration's."""
    from cli.accounts import show_assistant

    admin(nats, data_dir, lambda a: show_assistant(a, assistant_id, as_json))


@devices_app.command("list")
def devices_list(user: UserOpt = None, nats: NatsOpt = None, data_dir: DataOpt = None,
                 as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """Every bound device, or one user's."""
    from cli.accounts import list_devices

    admin(nats, data_dir, lambda a: list_devices(a, user, as_json, wide))


@devices_app.command("bind")
def devices_bind(
    code: Annotated[str, typer.Argument(help="The activation code the device shows or speaks.")],
    user: Annotated[str, typer.Option("--user", help="The owner (email or user id).")],
    assistant: Annotated[str | None, typer.Option(
        "--assistant", help="The owner's assistant it talks to (default: their default assistant).")
        ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the device.")] = None,
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Bind the device showing CODE to a user's assistant, as the owner does over the API."""
    from cli.accounts import bind_device

    admin(nats, data_dir, lambda a: bind_device(a, code, user, assistant, name, as_json))


DocsUserOpt = Annotated[str | None, typer.Option(
    "--user", help="The owner (email or user id); without it, the documents nobody owns (the system's).")]


@docs_app.command("add")
def docs_add(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Documents: .txt, .md, .html, .pdf")],
    user: DocsUserOpt = None,
    title: Annotated[str | None, typer.Option(help="How answers cite it (one file; default: its name).")
                     ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until each is indexed (or failed).")
                    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the indexer.")] = 300.0,
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Upload documents with a progress bar and follow each until it is indexed (or failed);
    exit 1 if any did not make it."""
    from cli.docs import add_documents

    admin(nats, data_dir, lambda a: add_documents(a, files, user, title, wait,
                                          timeout, as_json))


@docs_app.command("list")
def docs_list(user: DocsUserOpt = None, nats: NatsOpt = None, data_dir: DataOpt = None,
              as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """A user's documents (or the system's) with their indexing status."""
    from cli.docs import list_documents

    admin(nats, data_dir, lambda a: list_documents(a, user, as_json, wide))


@docs_app.command("search")
def docs_search(
    query: Annotated[str, typer.Argument(help="A question or keywords.")],
    user: DocsUserOpt = None,
    assistant: Annotated[str | None, typer.Option("--assistant", help="Only this assistant's documents.")
                         ] = None,
    limit: Annotated[int, typer.Option(min=1, max=50, help="Passages to show.")] = 5,
    nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Hybrid search (vectors and full text) over a user's documents, as the assistants search."""
    from cli.docs import search_documents

    admin(nats, data_dir, lambda a: search_documents(a, query, user, assistant, limit,
                                             as_json))


@docs_app.command("delete")
def docs_delete(document_id: Annotated[str, typer.Argument(help="The document's id.")],
                user: DocsUserOpt = None, nats: NatsOpt = None, data_dir: DataOpt = None,
                as_json: JsonOpt = False) -> None:
    """Delete a document (its passages leave the knowledge base)."""
    from cli.docs import delete_document

    admin(nats, data_dir, lambda a: delete_document(a, document_id, user, as_json))


@docs_app.command("reindex")
def docs_reindex(nats: NatsOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Rebuild the knowledge base's chunks from the log and the stored files (after the
    LanceDB directory was lost, or to re-embed everything)."""
    from cli.docs import reindex_documents

    admin(nats, data_dir, lambda a: reindex_documents(a, as_json))


@app.command()
def version() -> None:
    """Versions of vagent and of what it runs on."""
    import subprocess

    from bus.server import server_binary

    try:
        server = subprocess.run([server_binary(), "--version"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except (BusError, OSError) as exc:
        server = f"unavailable ({exc})"
    print(f"vagent {package_version('vagent')}")
    print(f"nats-py {package_version('nats-py')}, {server}")
    print(f"python {sys.version.split()[0]}")


@bench_app.command("bus")
def bench_bus(nats: NatsOpt = None,
              events: Annotated[int, typer.Option(help="Events per publish test.")] = 5000,
              hops: Annotated[int, typer.Option(help="Actor hops to time.")] = 2000) -> None:
    """Publish rate (awaited, pipelined) and one actor hop's latency, on this machine."""
    from benches.bus import bench_bus as run_bench
    from benches.bus import print_report

    # A log line per hop would be measured too.
    print_report(run(run_bench(nats, events=events, hops=hops), log_level="WARNING"))


@bench_app.command("dialogue")
def bench_dialogue(nats: NatsOpt = None,
                   turns: Annotated[int, typer.Option(help="Turns to time.")] = 200,
                   local: Annotated[bool, typer.Option(
                       "--local", help="Use the local model (at most 20 turns).")] = False,
                   conversation: Annotated[bool, typer.Option(
                       "--conversation",
                       help="All turns in one session: the history grows turn by turn.")] = False,
                   telemetry: Annotated[bool, typer.Option(
                       "--telemetry",
                       help="Compare telemetry off, metrics on, and metrics + tracing on "
                            "(OTLP to a local receiver): TURNS turns each.")] = False,
                   ) -> None:
    """Time from user.text to the first delta and sentence; tokens/s with --local."""
    from benches.dialogue import bench_dialogue as run_bench
    from benches.dialogue import bench_telemetry, print_report, print_telemetry_report

    if telemetry:
        print_telemetry_report(run(bench_telemetry(nats, turns=turns), log_level="WARNING"))
        return
    print_report(run(run_bench(nats, turns=turns, local=local, conversation=conversation),
                     log_level="WARNING"))


@bench_app.command("local-llm")
def bench_local_llm(
        model: Annotated[list[str] | None, typer.Option(
            "--model", help="A local model to measure (repeat; default: every known model).")] = None,
        base_url: Annotated[str | None, typer.Option(
            help="Measure a llama.cpp server already running here instead (its /v1 URL).")] = None,
        served_name: Annotated[str, typer.Option(help="The model name that server answers to.")] = "local",
        pid: Annotated[int | None, typer.Option(help="That server's pid, for its peak RSS.")] = None,
        eval_set: Annotated[bool, typer.Option(
            "--eval/--no-eval", help="Ask the eval set through the dialogue (else the runtime only).")
                            ] = True,
        threads: Annotated[int, typer.Option(help="Threads for the local server.")] = 2,
        answers: Annotated[Path | None, typer.Option(help="Write every answer to this JSON file.")] = None,
        ) -> None:
    """Local model candidates side by side: eval score, first delta and first sentence
    p50/p95, generation and prompt tokens/s, peak RSS."""
    from actors.dialogue.local_llm import MODELS
    from benches.local_llm import bench_local_llm as run_bench
    from benches.local_llm import print_report

    models = model or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown local model {unknown[0]!r}; known: {', '.join(MODELS)}")
    print_report(run(run_bench(models, base_url=base_url, served_name=served_name, pid=pid,
                               run_eval_set=eval_set, threads=threads), log_level="WARNING"),
                 answers_file=answers)


@bench_app.command("edge")
def bench_edge(nats: NatsOpt = None,
               sessions: Annotated[str, typer.Option(
                   help="Concurrent sessions; several, comma-separated, run one after another "
                        "(e.g. 10,50,100,200).")] = "10",
               asr: Annotated[bool, typer.Option(
                   "--asr/--no-asr", help="Speak the question (ASR) or type it.")] = True,
               providers: Annotated[str, typer.Option(
                   help="local (the offline models) or cloud (Deepgram, ElevenLabs and LLM "
                        "stand-ins with fixed delays: vagent's own cost).")] = "local",
               transport: Annotated[str, typer.Option(help="xiaozhi or ws.")] = "xiaozhi",
               listen: Annotated[float, typer.Option(
                   help="Seconds every session listens (streams silence) before speaking.")] = 5.0,
               max_sessions: Annotated[int, typer.Option(
                   help="Sessions the ASR worker takes at once ([asr] max_sessions; 0: its "
                        "default); the others wait, then are refused.")] = 0
               ) -> None:
    """N voice sessions at once: connections held, end of speech → first audio p50/p95 (and
    what vagent adds over cloud stand-ins), server CPU per listening session and per turn,
    memory per session."""
    from benches.edge import bench_edge as run_bench
    from benches.edge import print_report

    try:
        counts = [int(n) for n in sessions.split(",") if n.strip()]
    except ValueError:
        raise typer.BadParameter(f"sessions: numbers separated by commas, not {sessions!r}") from None
    if providers not in ("local", "cloud"):
        raise typer.BadParameter(f"providers: local or cloud, not {providers!r}")
    if transport not in ("xiaozhi", "ws"):
        raise typer.BadParameter(f"transport: xiaozhi or ws, not {transport!r}")
    for count in counts:
        print_report(run(run_bench(nats, sessions=count, asr=asr, providers=providers,  # type: ignore[arg-type]
                                   transport=transport, listen_s=listen,  # type: ignore[arg-type]
                                   max_sessions=max_sessions),
                         log_level="WARNING"))


@bench_app.command("abuse")
def bench_abuse(nats: NatsOpt = None,
                rounds: Annotated[int, typer.Option(help="Rounds, half of them under attack.")] = 8,
                turns: Annotated[int, typer.Option(help="Turns per normal session and round.")] = 10,
                kinds: Annotated[str, typer.Option(
                    help="Attacks, comma-separated (default: all).")] = "") -> None:
    """One anonymous client's worst within the limits: the other sessions' slowdown and the growth."""
    from benches.abuse import bench_abuse as run_bench
    from benches.abuse import print_report

    print_report(run(run_bench(nats, rounds=rounds, turns=turns, kinds=kinds), log_level="ERROR"))


@bench_app.command("rag")
def bench_rag(nats: NatsOpt = None,
              index_chunks: Annotated[int, typer.Option(
                  help="Chunks to index through the indexer actor (generated manuals).")] = 400,
              chunks: Annotated[int, typer.Option(help="Chunks in the search table (0: skip).")] = 10_000,
              large: Annotated[bool, typer.Option(
                  "--large", help="Also search 100k chunks.")] = False,
              queries: Annotated[int, typer.Option(help="Queries timed per table.")] = 200,
              events: Annotated[int, typer.Option(
                  help="Session events for the projection catch-up (0: skip).")] = 50_000) -> None:
    """Indexing chunks/s, hybrid search p50/p95 at 10k (and 100k) chunks, projection
    catch-up events/s."""
    from benches.rag import bench_rag as run_bench
    from benches.rag import print_report

    sizes = [size for size in (chunks, 100_000 if large else 0) if size]
    sizes = sorted(set(sizes))
    print_report(run(run_bench(nats, chunks=sizes, index_chunks=index_chunks, queries=queries,
                               events=events), log_level="WARNING"))


@bench_app.command("speech")
def bench_speech(nats: NatsOpt = None, data_dir: DataOpt = None,
                 language: Annotated[list[str] | None, typer.Option(
                     "--language", help="en or zh (repeat; default: both).")] = None,
                 clip: Annotated[list[str] | None, typer.Option(
                     "--clip", help="Only this clip of the test set (repeat; default: all).")] = None,
                 actor: Annotated[bool, typer.Option(
                     "--actor/--no-actor", help="Also time each clip through the ASR actor.")] = True,
                 tts: Annotated[bool, typer.Option("--tts/--no-tts", help="Also measure the voices.")
                                ] = True,
                 as_json: JsonOpt = False) -> None:
    """Offline speech on the committed test set: WER/CER and real-time factor per engine and
    language, language identification, end of speech → transcript through the ASR actor,
    each voice's first audio, real-time factor and read-back error, memory."""
    from benches.speech import LANGUAGES, print_report
    from benches.speech import bench_speech as run_bench

    languages = tuple(language or LANGUAGES)
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise typer.BadParameter(f"unknown language {unknown[0]!r}; known: {', '.join(LANGUAGES)}")
    results = run(run_bench(nats, languages=languages, names=clip, actor=actor, tts=tts,
                            data_dir=data_dir), log_level="WARNING")
    if as_json:
        print_json(results)
    else:
        print_report(results)


@bench_app.command("turns")
def bench_turns(nats: NatsOpt = None, data_dir: DataOpt = None,
                detector: Annotated[list[str] | None, typer.Option(
                    "--detector", help="silence or smart_turn (repeat; default: both).")] = None,
                item: Annotated[list[str] | None, typer.Option(
                    "--item", help="Only this item of the set (repeat; default: all).")] = None,
                kind: Annotated[list[str] | None, typer.Option(
                    "--kind", help="Only items of this kind (repeat; default: all).")] = None,
                concurrency: Annotated[int, typer.Option(help="Sessions played at once.")] = 3,
                as_json: JsonOpt = False) -> None:
    """Turn-taking on the committed labelled set, per end-of-turn detector side by side:
    false cut-offs, end-of-turn delay, false interruptions by backchannels, coughs and echo,
    resumes, barge-in stop latency, the turn model's CPU per decision."""
    from benches.turns import DETECTORS, print_report
    from benches.turns import bench_turns as run_bench
    from benches.turns_set import KINDS

    detectors = tuple(detector or DETECTORS)
    for value, known, what in ((detectors, DETECTORS, "detector"), (kind or [], KINDS, "kind")):
        unknown = [v for v in value if v not in known]
        if unknown:
            raise typer.BadParameter(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    if concurrency < 1:
        raise typer.BadParameter("--concurrency must be at least 1")
    results = run(run_bench(nats, detectors=detectors, names=item, kinds=kind, concurrency=concurrency,
                            data_dir=data_dir), log_level="WARNING")
    if as_json:
        print_json(results)
    else:
        print_report(results)


@bench_app.command("echo")
def bench_echo(as_json: JsonOpt = False) -> None:
    """The ASR's echo canceller on the assistant's own voice played back by a simulated
    speaker device: echo reduction (ERLE) per delay and level, double talk, CPU per frame."""
    from benches.echo import bench_echo as run_bench
    from benches.echo import print_report

    results = run_bench()
    if as_json:
        print_json(results)
    else:
        print_report(results)


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
