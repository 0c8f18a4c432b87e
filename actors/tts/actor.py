"""The tts actor: `assistant.sentence` → audio frames on `vagent.session.<sid>.audio.out`
(core NATS, in the session's negotiated `audio_out`, paced at real time) and
`tts.started`, `tts.sentence`, `tts.stopped` in the log.

- Sentences synthesize as they arrive (ahead of playback, several at once) and are
  spoken in log order; the turn's final `assistant.message` ends it once all is said.
- A `turn.interrupted` (barge-in, abort, new input) is watched on core NATS, so it is
  seen while this session's durable queue still waits: the sound stops within a frame,
  queued sentences of that turn drop, and later ones are ignored. So does the session's
  end (a hang-up), for every turn begun before it.
- A `turn.paused` (speech over the assistant, watched likewise) holds the turn's audio where
  it is; `turn.resumed` goes on from there, an interruption stops it.
- The voice is the assistant's (its `tts` provider and `voice`), else by its language: `zh`
  is spoken by Kokoro's Mandarin voice, `en` by the default provider, and `auto` by either,
  sentence by sentence, as the text's script wants (`actors.tts.voices`).
- Repeated sentences come from a bounded cache instead of the synthesizer.
- Bounded work per input: control characters are dropped, a turn says at most
  `[tts] max_turn_chars` characters (the rest is dropped, with an `error`
  `tts_turn_limit`), and the synthesizer takes at most `[tts] max_chars` per call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from actors.assistant import AssistantDirectory, AssistantProfile
from actors.base import Actor, Context
from actors.dialogue.sentences import speakable
from actors.tts.cache import AudioCache
from actors.tts.providers import Chain, TtsProvider, open_provider
from actors.tts.speaker import Sentence, Speaker
from actors.tts.synth import Synthesizer
from actors.tts.voices import Voices
from actors.watch import Watch
from audio.encode import DEFAULT_OUT, check_params
from domain.language import session_language
from schemas import (
    AssistantMessage,
    AssistantSentence,
    AudioParams,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    TurnInterrupted,
    TurnPaused,
    TurnResumed,
)

log = logging.getLogger("vagent.tts")
MAX_SPEAKERS = 4096  # idle sessions remembered (their audio params, closed turns)
MANDARIN = "kokoro"  # the provider of assistants whose language is zh


class Tts(Actor):
    name: ClassVar[str] = "tts"
    consumes: ClassVar[tuple[str, ...]] = ("assistant.sentence", "assistant.message")
    emits: ClassVar[frozenset[str]] = frozenset({"tts.started", "tts.sentence", "tts.stopped", "error"})
    concurrency: ClassVar[int] = 64

    async def setup(self) -> None:
        settings = self.config.tts
        self.provider: TtsProvider = await open_provider(settings)
        self.cache = AudioCache(int(settings.cache_mb * 2**20))
        self.max_turn_chars = max(1, settings.max_turn_chars)
        self.synthesizer = Synthesizer(self.provider, self.cache, settings.parallel,
                                       max(1, settings.max_chars))
        self.encode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tts-encode")
        self.speakers: OrderedDict[str, Speaker] = OrderedDict()
        self.voices: dict[tuple[str, str | None], Synthesizer] = {}  # loaded on first use
        self._loading = asyncio.Lock()
        self.assistants = AssistantDirectory(self.bus, self.data_dir)
        self._warming: set[asyncio.Task[None]] = set()
        self._watch = await Watch(self.bus, ("turn.interrupted", "turn.paused", "turn.resumed",
                                             "session.ended", "session.started"),
                                  self._watched).start()

    async def teardown(self) -> None:
        await self._watch.stop()
        for task in self._warming:
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)
        await asyncio.gather(*(speaker.close() for speaker in self.speakers.values()))
        await self.provider.close()
        for voice in self.voices.values():
            await voice.provider.close()
        self.encode_pool.shutdown(wait=False, cancel_futures=True)

    async def _watched(self, event: Event) -> None:
        if isinstance(event, TurnInterrupted):
            self._speaker(event.session_id).interrupt(event.turn_id, event.id, event.ts)
        elif isinstance(event, TurnPaused | TurnResumed):
            speaker = self.speakers.get(event.session_id)
            if speaker is not None:
                speaker.pause(event.turn_id, event.ts, paused=isinstance(event, TurnPaused))
        elif isinstance(event, SessionEnded) and event.reason != "user_exit":
            # Nobody is listening any more (the dialogue's goodbye, user_exit, is still to be
            # said): stop what is playing or queued, and what the answer still streams.
            self._speaker(event.session_id).hang_up(event.id, event.ts)
        elif isinstance(event, SessionStarted):
            # The voice's model loads while the user speaks and the answer is thought of,
            # not after the first sentence arrives (Kokoro: seconds).
            task = asyncio.create_task(self._warm(event))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _warm(self, started: SessionStarted) -> None:
        try:
            await self._voices(await self.assistants.for_events([started]), [started])
        except Exception as exc:  # the first sentence tries again, and says why
            log.warning("voice not loaded ahead", extra={"session": started.session_id,
                                                           "error": repr(exc)})

    async def handle(self, event: Event, ctx: Context) -> None:
        if isinstance(event, AssistantSentence):
            await self._sentence(event, ctx)
        elif isinstance(event, AssistantMessage) and not event.tool_calls and event.turn_id:
            # The turn's last word (interrupted or not): stop once everything queued is said.
            speaker = self.speakers.get(event.session_id)
            if speaker is not None:
                speaker.end(event.turn_id, event.id)

    async def _sentence(self, event: AssistantSentence, ctx: Context) -> None:
        speaker = self._speaker(event.session_id)
        turn_id = event.turn_id or event.id
        # What lies beyond the most a turn may say is never looked at: cleaning and cutting
        # 60,000 characters nobody will hear would hold the event loop (~20 ms).
        window = 2 * (self.max_turn_chars + self.synthesizer.max_chars)
        text = speakable(event.text[:window])
        if not text or not speaker.accepts(turn_id, event.ts):
            return
        if speaker.voices is None:  # the session's first sentence: one history read
            history = [e.event for e in await ctx.history()]
            await self._read_params(speaker, history, ctx)
            speaker.voices = await self._voices(await self.assistants.for_events(history), history)
        if speaker.params_error is not None or not speaker.accepts(turn_id, event.ts):
            return  # unspeakable, or interrupted while the session was read
        synthesizer = speaker.voices.for_text(text)
        said, reached = speaker.allot(turn_id, text, self.max_turn_chars,
                                      synthesizer.max_chars, more=len(event.text) > window)
        if reached:
            # Recorded once per turn, where it happened; later sentences of the turn drop silently.
            await ctx.emit(Error(
                session_id=event.session_id, turn_id=event.turn_id, code="tts_turn_limit",
                message=f"the answer is longer than the {self.max_turn_chars} characters a turn may "
                        f"say: {len(said)} of the {len(event.text)} characters of sentence "
                        f"{event.index} were spoken, and nothing after them", source="tts"))
        if not said:
            return
        text = said
        synthesis = synthesizer.start(text, first=speaker.first_of(turn_id))
        # Acknowledged once queued, before it is spoken: a crash loses the rest of this
        # sentence's audio instead of replaying it late. Live audio is useless late, and a
        # redelivered sentence would speak over the next turn.
        speaker.say(turn_id, Sentence(event.id, event.index, text, synthesis, ctx,
                                      synthesizer.provider.name, synthesizer.provider.voice))
        if event.turn_id is None:
            speaker.end(turn_id, event.id)  # a sentence of no turn is a whole utterance

    async def _voices(self, profile: AssistantProfile | None,
                      history: list[Event | None]) -> Voices:
        """The session's voices: the assistant's own provider and voice when it names one
        (a voice alone is one of its language's provider), else by its language."""
        if profile is None:
            return Voices(self.synthesizer)
        started = next((e for e in reversed(history) if isinstance(e, SessionStarted)), None)
        language = session_language(profile.language, profile.assistant_id,
                                    started.language if started else None)
        if profile.tts is not None or profile.voice is not None:
            name = profile.tts or (MANDARIN if language == "zh" else self.provider.name)
            return Voices(await self._voice(name, profile.voice, profile.assistant_id))
        if language == "zh":
            return Voices(await self._voice(MANDARIN, None, profile.assistant_id))
        if language == "auto":
            mandarin = await self._voice(MANDARIN, None, profile.assistant_id)
            return Voices(self.synthesizer, mandarin if mandarin is not self.synthesizer else None)
        return Voices(self.synthesizer)

    async def _voice(self, name: str, voice: str | None, assistant_id: str) -> Synthesizer:
        """A provider's voice, loaded the first time a session wants it (so a stack whose
        sessions are all English never loads the Mandarin model) and shared by every
        session that wants it; the default one when it cannot be loaded."""
        if name == self.provider.name and voice is None:
            return self.synthesizer
        key = (name, voice)
        async with self._loading:  # two sessions at once load a model once
            if key not in self.voices:
                try:
                    picked = self.provider.picking(*key) if isinstance(self.provider, Chain) else None
                    provider = picked or await open_provider(self.config.tts, *key)
                except Exception as exc:
                    log.error("cannot load the assistant's voice: using the default",
                              extra={"assistant_id": assistant_id, "tts": name, "voice": voice,
                                     "error": str(exc)})
                    return self.synthesizer
                self.voices[key] = Synthesizer(provider, self.cache, self.synthesizer.parallel,
                                               self.synthesizer.max_chars)
        return self.voices[key]

    async def _read_params(self, speaker: Speaker, history: list[Event | None], ctx: Context) -> None:
        params = audio_out_of(history)
        try:
            check_params(params)
        except ValueError as exc:
            speaker.params_error = str(exc)
            await ctx.emit(Error(session_id=speaker.session_id, code="tts_audio_params",
                                 message=f"cannot speak: {exc}", source="tts"))
            return
        speaker.params = params

    def _speaker(self, session_id: str) -> Speaker:
        speaker = self.speakers.get(session_id)
        if speaker is None:
            speaker = Speaker(session_id, self.bus, actor=self.name, encode_pool=self.encode_pool)
            self.speakers[session_id] = speaker
            self._forget_idle()
        self.speakers.move_to_end(session_id)
        return speaker

    def _forget_idle(self) -> None:
        for sid in list(self.speakers)[:max(0, len(self.speakers) - MAX_SPEAKERS)]:
            if self.speakers[sid].idle:
                del self.speakers[sid]


def audio_out_of(events: list[Event | None]) -> AudioParams:
    """The session's negotiated downlink format (the latest session.started), or the default."""
    for event in reversed(events):
        if isinstance(event, SessionStarted):
            return event.audio_out or DEFAULT_OUT
    return DEFAULT_OUT
