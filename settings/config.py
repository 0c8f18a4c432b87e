"""vagent's settings file (`vagent.toml`, or the path in `VAGENT_CONFIG`), read once where a
process starts (`load`, which also applies the environment variables of ENV_OVERRIDES and
ENV_VERBATIM) and passed to what needs it; tests build a `Config` themselves (`parse` reads no
environment). Each setting's `doc(...)` is its meaning in docs/configuration.md, which
settings/reference.py renders from these declarations.

Secrets never live here or in events: a provider names the environment variable
holding its key (`api_key_env`), and `VAGENT_SECRETS_FILE` may point to a
KEY=VALUE file that fills such variables.

    [[llm.providers]]            # an ordered chain: the next one answers when one fails
    name = "openai"
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"

    [[tools.webhooks]]
    name = "weather"
    description = "Current weather for a city"
    url = "http://127.0.0.1:9000/weather"
    parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }

    [[tools.mcp]]
    name = "files"
    command = ["python", "my_mcp_server.py"]   # stdio; or url = "http://host/mcp" (streamable HTTP)
"""

from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec


def doc(meaning: str) -> msgspec.Meta:
    """A setting's meaning, as `docs/configuration.md` shows it (settings/reference.py)."""
    return msgspec.Meta(description=meaning)


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, doc("the provider's name: what an assistant's `llm` picks and "
                             "`assistant.message.provider` records")]
    base_url: Annotated[str, doc("the OpenAI-compatible API's base URL")]
    model: Annotated[str, doc("the model name sent to it")]
    api_key_env: Annotated[str | None, doc(
        "the environment variable (or secrets-file key) holding its API key")] = None
    timeout: Annotated[float, doc("seconds for a whole request")] = 60.0
    first_token_timeout: Annotated[float, doc(
        "seconds until the stream's first chunk; later, the next provider answers")] = 15.0
    # Small local models may ramble on.
    max_tokens: Annotated[int | None, doc("answer length cap in tokens; unset: the server's")] = None
    # See ProviderChain._probe.
    tool_probe: Annotated[bool, doc(
        "ask for a tool call with the question alone first (helps small models)")] = False


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    failures: Annotated[int, doc("this many failures of a provider within `window` open its breaker")] = 3
    window: Annotated[float, doc("seconds over which failures count")] = 60.0
    cooldown: Annotated[float, doc(
        "seconds an open breaker skips its provider before one probe request may try it")] = 30.0


class AsrProviderConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, doc("the provider's name: what an assistant's `asr` picks and "
                             "`transcript.final.provider` records")]
    base_url: Annotated[str, doc(
        "the OpenAI-compatible API's base URL: utterances go to `<base_url>/audio/transcriptions`")]
    model: Annotated[str, doc(
        "the transcription model sent to it, e.g. `whisper-1` or `FunAudioLLM/SenseVoiceSmall`")]
    api_key_env: Annotated[str | None, doc(
        "the environment variable (or secrets-file key) holding its API key")] = None
    # The user waits for this before the answer can even begin.
    timeout: Annotated[float, doc(
        "seconds for one utterance's transcript; later, the next provider transcribes it")] = 15.0


class TtsProviderConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, doc("the provider's name: what an assistant's `tts` picks")]
    base_url: Annotated[str, doc(
        "the OpenAI-compatible API's base URL: sentences go to `<base_url>/audio/speech`")]
    model: Annotated[str, doc("the speech model sent to it, e.g. `gpt-4o-mini-tts` or `tts-1`")]
    voice: Annotated[str, doc(
        "the voice sent to it, e.g. `alloy` or `FunAudioLLM/CosyVoice2-0.5B:alex`; an "
        "assistant's `voice` replaces it when the assistant picks this provider")]
    api_key_env: Annotated[str | None, doc(
        "the environment variable (or secrets-file key) holding its API key")] = None
    # Raw PCM or WAV need no decoder and stream as they are made.
    response_format: Annotated[Literal["pcm", "wav"], doc(
        "`pcm`: raw 16-bit mono PCM at `sample_rate`; `wav`: a 16-bit mono WAV stream, "
        "whose header gives the rate")] = "pcm"
    sample_rate: Annotated[int, msgspec.Meta(gt=0), doc(
        "the rate of its `pcm` audio (OpenAI's is 24000); audio of another rate is resampled "
        "to the first provider's")] = 24000
    timeout: Annotated[float, doc("seconds for one sentence's whole audio")] = 30.0
    first_audio_timeout: Annotated[float, doc(
        "seconds until its first audio; later, the next provider speaks the sentence")] = 10.0


class LLMSettings(msgspec.Struct, forbid_unknown_fields=True):
    providers: Annotated[list[ProviderConfig], doc(
        "an ordered chain of OpenAI-compatible providers; the next answers when one fails. "
        "empty: `OPENAI_BASE_URL`'s provider, else the local model")] = msgspec.field(
        default_factory=list)
    breaker: Annotated[BreakerConfig, doc("when a failing provider is skipped")] = msgspec.field(
        default_factory=BreakerConfig)
    local_model: Annotated[str, doc(
        "the model `vagent up` serves when no provider is configured: `qwen2.5-0.5b`, "
        "`qwen2.5-1.5b` (after `uv sync --extra qwen-1-5b`) or `smollm2-135m`")] = "qwen2.5-0.5b"


class WebhookTool(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, doc("the tool's name, as the LLM sees it")]
    description: Annotated[str, doc("what the tool does, for the LLM")]
    url: Annotated[str, doc("where the call's JSON arguments are POSTed; the response body is the result")]
    parameters: Annotated[dict[str, Any], doc("the arguments' JSON Schema")] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}})
    headers: Annotated[dict[str, str], doc(
        "request headers; `${NAME}` is filled from the environment or the secrets file")] = msgspec.field(
        default_factory=dict)
    timeout: Annotated[float | None, doc("seconds per call; unset: `[tools] timeout`")] = None


class McpServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, doc("the server's name")]
    command: Annotated[list[str] | None, doc("the command that starts a stdio server")] = None
    url: Annotated[str | None, doc("a streamable-HTTP server's URL")] = None
    env: Annotated[dict[str, str], doc("environment variables for the stdio command")] = msgspec.field(
        default_factory=dict)
    timeout: Annotated[float | None, doc("seconds per call; unset: `[tools] timeout`")] = None


class ToolSettings(msgspec.Struct, forbid_unknown_fields=True):
    # knowledge_search is offered only to assistants with documents (see actors/dialogue/actor.py).
    builtins: Annotated[list[str], doc(
        "built-in tools offered: `get_time`, `calculator`, `knowledge_search` (the last only "
        "to assistants with documents)")] = msgspec.field(
        default_factory=lambda: ["get_time", "calculator", "knowledge_search"])
    webhooks: Annotated[list[WebhookTool], doc("HTTP tools")] = msgspec.field(default_factory=list)
    mcp: Annotated[list[McpServerConfig], doc(
        "MCP servers whose tools are offered (stdio or streamable HTTP)")] = msgspec.field(
        default_factory=list)
    timeout: Annotated[float, doc("seconds per tool call, unless the tool sets its own")] = 10.0
    max_steps: Annotated[int, doc(
        "LLM → tools → LLM rounds in one turn; then the model answers without tools")] = 4
    # The LLM's context is small.
    max_result_chars: Annotated[int, doc("a longer tool result is cut to this many characters")] = 8000


class DialogueSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Kept byte-identical across turns, so local servers reuse their prompt cache.
    system_prompt: Annotated[str, doc(
        "the system prompt of assistants with an empty persona; left unchanged, a Mandarin "
        "session gets its Mandarin version")] = (
        "You are vagent, a friendly voice assistant. Answer in one to three short, "
        "spoken-style sentences. Use a tool when it helps."
    )
    history_tokens: Annotated[int, doc(
        "the history's budget in tokens; the oldest turns are dropped first")] = 3000
    # Speech starts sooner when the first sentence is short.
    first_clause_chars: Annotated[int, doc(
        "the first sentence may end at a comma after this many characters")] = 24
    exit_phrases: Annotated[list[str], doc(
        "phrases that end the session with `goodbye`, without an LLM call")] = msgspec.field(
        default_factory=lambda: ["bye", "goodbye", "bye bye", "see you", "that's all", "再见", "拜拜"])
    goodbye: Annotated[str, doc(
        "the answer to an exit phrase; left unchanged, a Mandarin session's is 再见！")] = "Goodbye!"


class Argon2Settings(msgspec.Struct, forbid_unknown_fields=True):
    """argon2id cost (RFC 9106's second recommended profile). Changing it rehashes each
    password at its owner's next login."""

    time_cost: Annotated[int, doc("argon2id passes")] = 3
    memory_kib: Annotated[int, doc("memory per hash, KiB")] = 65_536
    parallelism: Annotated[int, doc("argon2id lanes")] = 4
    # Memory is concurrency × memory_kib, and the CPU stays free enough for real-time turns.
    concurrency: Annotated[int, doc("hashes at once, per edge process")] = 2
    queue: Annotated[int, doc(
        "hashes waiting for one, per edge process; more get `503 busy` (`Retry-After`)")] = 8


class SmtpSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: Annotated[str | None, doc("the SMTP server; set to mail verification codes")] = None
    port: Annotated[int, doc("the SMTP port")] = 587
    username: Annotated[str | None, doc("the SMTP login")] = None
    password_env: Annotated[str | None, doc(
        "the environment variable holding the SMTP password")] = None
    sender: Annotated[str, doc("the From address")] = "vagent <no-reply@localhost>"
    starttls: Annotated[bool, doc("upgrade the connection with STARTTLS")] = True
    timeout: Annotated[float, doc("seconds per SMTP exchange")] = 10.0


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Without the secret a random key is created once in the data directory (`jwt.key`, mode
    # 0600), which a second edge on another machine would not share.
    jwt_secret_env: Annotated[str, doc(
        "the environment variable holding the token signing key (32+ characters, shared by "
        "every edge); unset: a random key in `<data dir>/jwt.key`")] = "VAGENT_JWT_SECRET"
    access_ttl: Annotated[float, doc("access token lifetime, seconds")] = 900.0
    refresh_ttl: Annotated[float, doc("refresh token lifetime, seconds")] = 30 * 86_400.0
    device_token_ttl: Annotated[float, doc("device token lifetime, seconds")] = 365 * 86_400.0
    password_min_length: Annotated[int, doc("shorter passwords get `422 weak_password`")] = 10
    argon2: Annotated[Argon2Settings, doc("password hashing")] = msgspec.field(
        default_factory=Argon2Settings)
    lockout_failures: Annotated[int, doc(
        "failed logins in a row (within `lockout_seconds`) that lock the account")] = 5
    lockout_seconds: Annotated[float, doc(
        "how long a locked account answers `423 account_locked`, seconds")] = 900.0
    rate_limit: Annotated[int, doc(
        "requests per client IP and `rate_window` to register, login, refresh, device "
        "activation and `POST /webrtc/offer`, per edge process; more: `429`")] = 20
    rate_window: Annotated[float, doc("the rate limit's window, seconds")] = 60.0
    trust_forwarded_for: Annotated[bool, doc(
        "behind a proxy: the client address is `X-Forwarded-For`'s first")] = False
    email_verification: Annotated[Literal["auto", "smtp", "log", "off"], doc(
        "verification codes: `auto` mails them when `[auth.smtp] host` is set and is off "
        "otherwise; `log` writes them to the log (development)")] = "auto"
    code_ttl: Annotated[float, doc(
        "verification and device activation codes live this long, seconds")] = 900.0
    smtp: Annotated[SmtpSettings, doc("the mail server for verification codes")] = msgspec.field(
        default_factory=SmtpSettings)


class XiaozhiConfig(msgspec.Struct, forbid_unknown_fields=True):
    wake_words: Annotated[list[str], doc(
        "wake words dropped before a typed turn, besides the built-in ones (\"你好小智\", "
        "\"hi xiaozhi\")")] = msgspec.field(default_factory=list)
    # A device with a serial number proves its activation poll with its efuse key (HMAC
    # key0); only a key known here is checked.
    hmac_keys: Annotated[dict[str, Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]], doc(
        "device keys by serial number: the 32-byte HMAC key (hex) burned into a device's "
        "efuse; its activation must be signed with it (`401 hmac_invalid` otherwise)")] = msgspec.field(
        default_factory=dict)


class EdgeSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: Annotated[str, doc("the address the edge listens on; `0.0.0.0` for the LAN")] = "127.0.0.1"
    port: Annotated[int, doc(
        "the edge's port (`vagent up --edge-port`, `vagent edge --port`)")] = 8000
    max_body_bytes: Annotated[int, doc("a larger JSON request body gets `413 body_too_large`")] = 1_048_576
    max_upload_bytes: Annotated[int, doc(
        "a larger document upload gets `413`, and nothing is stored")] = 20 * 1_048_576
    max_documents_per_user: Annotated[int, doc(
        "documents one account keeps (failed ones too, until deleted); more: `413 quota_exceeded`")] = 100
    max_document_bytes_per_user: Annotated[int, doc(
        "bytes of documents one account keeps; more: `413 quota_exceeded`")] = 100 * 1_048_576
    # A silent or trickling (slowloris) client is closed.
    header_timeout: Annotated[float, doc(
        "seconds for a request's head, from the connect or the previous response; then "
        "closed (`408` if it had begun)")] = 10.0
    body_timeout: Annotated[float, doc(
        "seconds for a request's whole body after its head (trickling does not extend it); "
        "then `408 body_timeout`. Raise it for large uploads over slow links")] = 60.0
    first_message_timeout: Annotated[float, doc(
        "seconds for a WebSocket client's first message; then close `4408`")] = 30.0
    # As a local install expects; turn off before exposing the edge.
    anonymous: Annotated[bool, doc(
        "accept real-time connections without a token (they talk to the default assistant); "
        "false: close `4401`")] = True
    max_connections: Annotated[int, doc(
        "per edge process: real-time sessions (more: close `1013`) and open sockets of any "
        "kind, idle ones too (more: `503 too_many_connections`)")] = 1000
    # Enough for a household behind one NAT.
    max_sessions_per_address: Annotated[int, doc(
        "real-time connections of one client address at once over `/ws`, xiaozhi and WebRTC; "
        "more: close `1013`, or `429 too_many_sessions` for an offer")] = 20
    max_offers_in_progress: Annotated[int, doc(
        "WebRTC offers being set up at once, per edge process; more: `503 busy`")] = 4
    offers_per_second: Annotated[float, doc(
        "WebRTC offers per client address and second on average; more: `429 too_many_offers`, "
        "answered before anything of the offer is read")] = 1.0
    offer_burst: Annotated[int, doc("WebRTC offers one address may send in a burst")] = 3
    max_frame_bytes: Annotated[int, doc(
        "one WebSocket message, text or binary, but a `/ws` photo (`[vision] max_image_bytes`); "
        "larger: close `1009`")] = 65_536
    max_messages_per_second: Annotated[int, doc(
        "WebSocket messages per connection and second, bursts of 2×; more: close `1008`")] = 100
    # A client whose messages keep being refused is broken or probing: answering each of
    # them at the message rate would cost the edge more than the client.
    max_errors_per_second: Annotated[float, doc(
        "refused messages (bad JSON, unknown types, invalid fields) a connection may send per "
        "second, bursts of 2×; beyond them its next messages are not read until the budget "
        "allows one more, so a stream of bad messages waits in the client's own buffers")] = 5.0
    hello_timeout: Annotated[float, doc(
        "seconds for a xiaozhi device's hello; then close `4408`")] = 10.0
    idle_timeout: Annotated[float, doc(
        "seconds a xiaozhi session may pass without speech or text (either side); then the "
        "device is told goodbye and the session ends with reason `idle`")] = 120.0
    # A device is configured with one address (its OTA URL) and is told the others.
    public_url: Annotated[str | None, doc(
        "the edge's address as devices reach it, e.g. `https://vagent.example.org`: the "
        "WebSocket and firmware URLs a xiaozhi device is given; unset: the request's own "
        "`Host`")] = None
    # A typed turn becomes a prompt, a log entry and read-model rows, and no one types more
    # in one go.
    max_text_chars: Annotated[int, doc(
        "a longer typed turn (`user.text`, xiaozhi `listen detect`) gets `error text_too_long`")] = 2000
    # A person waits for the answer or adds a correction or two; a flood would queue in
    # every actor.
    max_waiting_turns: Annotated[int, doc(
        "typed turns of one session waiting for their answer (each at most 60 s); more: "
        "`error too_many_turns`")] = 3
    max_turns_per_second: Annotated[float, doc(
        "typed turns per session and second on average, a turn counting once per 400 "
        "characters begun; more: `error too_many_turns`")] = 1.0
    turn_burst: Annotated[int, doc("typed turns allowed in a burst")] = 5
    # Shared by every session of one client address: without it a client's typed-turn work
    # grows with the sessions it opens (`max_sessions_per_address`).
    max_turns_per_address_second: Annotated[float, doc(
        "typed turns per client address and second on average, all its sessions together "
        "(counted as `max_turns_per_second` counts them), bursts of 2 × `turn_burst`; more: "
        "`error too_many_turns`")] = 2.0
    ice_servers: Annotated[list[str], doc(
        "WebRTC STUN/TURN servers, e.g. `stun:stun.example.org:3478`; none keeps calls "
        "offline-friendly")] = msgspec.field(default_factory=list)
    xiaozhi: Annotated[XiaozhiConfig, doc("xiaozhi devices")] = msgspec.field(
        default_factory=XiaozhiConfig)


class ElevenLabsConfig(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, doc("the ElevenLabs model (their low-latency one)")] = "eleven_flash_v2_5"
    # Raw PCM is asked for (`output_format=pcm_<rate>`), so nothing needs decoding.
    sample_rate: Annotated[int, doc("the PCM sample rate asked for")] = 24000
    url: Annotated[str | None, doc("another base URL, e.g. a regional endpoint")] = None


class TtsSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The voice, and what one input may make the TTS do."""

    provider: Annotated[str | None, doc(
        "`piper`, `kokoro`, `elevenlabs`, `openai` (the `providers` chain), a provider's name "
        "or an installed plugin's; unset: `openai` when `providers` are set, else `elevenlabs` "
        "when `ELEVENLABS_API_KEY` is set, else `piper` (Mandarin sessions: `kokoro`)")] = None
    voice: Annotated[str | None, doc(
        "a Piper voice file, a Kokoro voice (`jm_kumo`…) or an ElevenLabs voice id; unset: "
        "the provider's own (Piper's bundled voice)")] = None
    parallel: Annotated[int, msgspec.Meta(ge=1), doc(
        "syntheses at a time across sessions (a turn's first sentence goes first)")] = 1
    cache_mb: Annotated[float, doc("MB of quick replies kept synthesized")] = 32.0
    elevenlabs: Annotated[ElevenLabsConfig, doc("ElevenLabs")] = msgspec.field(
        default_factory=ElevenLabsConfig)
    providers: Annotated[list[TtsProviderConfig], doc(
        "an ordered chain of OpenAI-compatible speech servers (`POST /audio/speech`); the "
        "next speaks a sentence when one fails before its first audio")] = msgspec.field(
        default_factory=list)
    breaker: Annotated[BreakerConfig, doc("when a failing speech provider is skipped")] = (
        msgspec.field(default_factory=BreakerConfig))
    # Piper's memory and time grow with a call's audio (~160 MB at the peak for 200
    # characters, 7–11 s of speech), and a synthesizer slot serves no other session during
    # a call: another session waits one piece at most.
    max_chars: Annotated[int, doc(
        "characters per synthesis call; longer text is synthesized in pieces, cut at "
        "sentence ends, else clauses, else words")] = 200
    # A turn's audio is held until it ends (its recording), so this also bounds a session's
    # memory: ~5 MB of PCM at Piper's 22 kHz.
    max_turn_chars: Annotated[int, doc(
        "characters one turn may speak (1–2 minutes); the rest is not spoken "
        "(`error tts_turn_limit`)")] = 2000


class VadConfig(msgspec.Struct, forbid_unknown_fields=True):
    threshold: Annotated[float, doc("silero speech probability that starts speech")] = 0.5
    release: Annotated[float | None, doc(
        "below this probability is silence; unset: `threshold` − 0.15")] = None
    silence_ms: Annotated[int, doc("silence that ends an utterance (auto listen mode), ms")] = 400
    preroll_ms: Annotated[int, doc("audio kept from before the onset, ms")] = 250
    min_speech_ms: Annotated[int, doc("shorter speech never opens an utterance, ms")] = 96
    # Silero costs most of a listening session's CPU; a window this quiet is never speech.
    energy_floor_dbfs: Annotated[float, doc(
        "outside speech, a 32 ms window quieter than this (RMS, dBFS) is silence without "
        "asking silero; the quietest speech onset in the test audio is -52 dBFS; `-inf`: "
        "silero hears every window")] = -60.0
    # Memory, and a stuck VAD.
    max_utterance_ms: Annotated[int, doc("an utterance is cut here, ms")] = 30_000

    @property
    def release_threshold(self) -> float:
        return self.release if self.release is not None else max(0.0, self.threshold - 0.15)


# Heard over the assistant's speech, these alone do not interrupt it (case and
# punctuation aside): English and Mandarin acknowledgements.
BACKCHANNELS = [
    "mhm", "mm", "mmm", "hmm", "uh huh", "uh-huh", "yeah", "yes", "yep", "ok", "okay", "right",
    "sure", "i see", "got it", "alright", "cool",
    "嗯", "嗯嗯", "哦", "噢", "啊", "对", "对对", "对对对", "是", "是的", "好", "好的", "行", "明白",
    # Whisper writes a particle a speaker barely voiced: "对" heard as "对呀".
    "对呀", "对啊", "是啊", "是呀", "好呀", "好啊", "行啊", "嗯哼", "没错", "明白了", "知道了",
]


class TurnConfig(msgspec.Struct, forbid_unknown_fields=True):
    detector: Annotated[Literal["smart_turn", "silence"], doc(
        "`smart_turn`: at each pause the turn model (Smart Turn v3.2) decides whether the "
        "utterance is complete; `silence`: `[asr.vad] silence_ms` of silence ends every "
        "utterance")] = "smart_turn"
    complete_hold_ms: Annotated[int, doc(
        "silence that ends an utterance the model judges complete, ms")] = 200
    incomplete_max_ms: Annotated[int, doc(
        "silence that ends an utterance judged incomplete anyway, ms")] = 2000
    threshold: Annotated[float, doc("the turn model's P(complete) that ends a turn")] = 0.5
    false_interruption_timeout_ms: Annotated[int, doc(
        "speech over the assistant pauses it; with no words transcribed within this, it "
        "resumes where it paused, ms")] = 2000
    backchannels: Annotated[list[str], doc(
        "heard over the assistant, these alone do not interrupt it")] = msgspec.field(
        default_factory=lambda: list(BACKCHANNELS))
    echo: Annotated[Literal["auto", "on", "off"], doc(
        "discount the assistant's own voice coming back through the client's microphone; "
        "`auto`: unless the client says it cancels echo itself (xiaozhi `features.aec`, the web "
        "page's calls, `/ws?echo_cancelled=true`)")] = "auto"

    def __post_init__(self) -> None:
        for name in ("complete_hold_ms", "incomplete_max_ms", "false_interruption_timeout_ms"):
            if not 0 <= getattr(self, name) <= 60_000:
                raise msgspec.ValidationError(f"`{name}` must be 0–60000 ms")
        if not 0.0 <= self.threshold <= 1.0:
            raise msgspec.ValidationError("`threshold` must be between 0 and 1")


class DeepgramConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, doc("Deepgram's WebSocket base URL")] = "wss://api.deepgram.com"
    model: Annotated[str, doc("the Deepgram model")] = "nova-3"
    language: Annotated[str, doc("the language spoken")] = "en"


class AsrSettings(msgspec.Struct, forbid_unknown_fields=True):
    engine: Annotated[Literal["auto", "moonshine", "deepgram", "openai"], doc(
        "`openai`: the `providers` chain, for every language; `auto`: `openai` when "
        "`providers` are set, else `deepgram` when `DEEPGRAM_API_KEY` is set (environment "
        "or secrets file), else `moonshine`")] = "auto"
    # Coughs and "mhm" do not count.
    barge_in_min_ms: Annotated[int, doc("speech over the assistant this long interrupts it, ms")] = 300
    partial_ms: Annotated[int, doc(
        "moonshine: audio between partial transcripts, ms (CPU vs freshness)")] = 400
    vad: Annotated[VadConfig, doc("speech detection")] = msgspec.field(default_factory=VadConfig)
    turn: Annotated[TurnConfig, doc(
        "turn-taking: when an utterance ends, and speech over the assistant (each assistant "
        "may override these)")] = msgspec.field(default_factory=TurnConfig)
    deepgram: Annotated[DeepgramConfig, doc("Deepgram")] = msgspec.field(
        default_factory=DeepgramConfig)
    providers: Annotated[list[AsrProviderConfig], doc(
        "an ordered chain of OpenAI-compatible transcription servers (`POST "
        "/audio/transcriptions`); the next transcribes an utterance when one fails")] = (
        msgspec.field(default_factory=list))
    breaker: Annotated[BreakerConfig, doc("when a failing transcription provider is skipped")] = (
        msgspec.field(default_factory=BreakerConfig))
    max_sessions: Annotated[int, doc(
        "sessions one ASR worker hears at once; more wait (`session.queued`) for a place on "
        "any worker. 0: 8 per core with local models (moonshine, whisper: a voice turn costs "
        "~0.85 s of CPU, so beyond that every session slows down), unlimited with servers "
        "(deepgram, openai); -1: unlimited")] = 0
    max_queue_ms: Annotated[int, doc(
        "how long a session waits for a place before it is refused (`session.refused`, "
        "reason `busy`: the client is told to try later), ms")] = 10000


class ActorSettings(msgspec.Struct, forbid_unknown_fields=True):
    ack_wait: Annotated[float | None, doc(
        "seconds before an unacknowledged message is redelivered; unset: each actor's own "
        "(30, the indexer 60)")] = None


class KnowledgeSettings(msgspec.Struct, forbid_unknown_fields=True):
    embed_threads: Annotated[int, doc(
        "threads of one embedding; 0: every core")] = 0
    max_chunks: Annotated[int, doc(
        "chunks per document (~3 MB of text): a longer one gets `413 document_too_long` at "
        "upload when its size tells, else `document.failed` at indexing")] = 5000


class VisionSettings(msgspec.Struct, forbid_unknown_fields=True):
    base_url: Annotated[str, doc(
        "an OpenAI-compatible API whose model accepts images; empty: no vision (photos are "
        "refused with `vision_not_configured`)")] = ""
    model: Annotated[str, doc("the vision model's name sent to it")] = ""
    api_key_env: Annotated[str | None, doc(
        "the environment variable (or secrets-file key) holding its API key")] = None
    timeout: Annotated[float, doc("seconds for one description")] = 30.0
    max_tokens: Annotated[int, doc("a description's length cap in tokens")] = 300
    max_image_bytes: Annotated[int, doc(
        "the largest photo accepted (JPEG, PNG or WebP), also on `/ws`, whose message may be "
        "that large in base64; a larger one is refused with 413 (`image_too_large`)")
    ] = 5 * 1024 * 1024
    token_ttl: Annotated[float, doc(
        "seconds a device's vision token (handed over in its MCP `initialize`) stays valid")] = 3600.0


class PriceConfig(msgspec.Struct, forbid_unknown_fields=True):
    provider: Annotated[str, doc(
        "the provider's name as events record it (an `[[llm.providers]]` name, `local`, "
        "`deepgram`, `piper`…)")]
    model: Annotated[str, doc("the model's name as events record it; `*`: any model of the provider")] = "*"
    prompt_per_million: Annotated[float, doc("cost of a million prompt (input) tokens")] = 0.0
    completion_per_million: Annotated[float, doc(
        "cost of a million completion (output) tokens")] = 0.0
    audio_in_per_minute: Annotated[float, doc(
        "cost of a minute of speech heard (transcription providers)")] = 0.0
    audio_out_per_minute: Annotated[float, doc(
        "cost of a minute of speech spoken (synthesis providers)")] = 0.0


class TelemetrySettings(msgspec.Struct, forbid_unknown_fields=True):
    metrics: Annotated[bool, doc(
        "Prometheus metrics at `/metrics` (the edge's port, and `--metrics-port` of a process "
        "that runs actors)")] = True
    otlp_endpoint: Annotated[str, doc(
        "an OTLP/HTTP collector's base URL (e.g. `http://localhost:4318`): one trace per turn "
        "is exported there; empty: tracing off, at no cost")] = ""
    service_name: Annotated[str, doc(
        "`service.name` of exported spans; each process adds its role (`vagent-edge`, "
        "`vagent-actors`…)")] = "vagent"
    currency: Annotated[str, doc("the currency `[[prices]]` are in, shown beside every cost")] = "USD"


class Config(msgspec.Struct, forbid_unknown_fields=True):
    llm: Annotated[LLMSettings, doc("LLM providers and the local model")] = msgspec.field(
        default_factory=LLMSettings)
    tools: Annotated[ToolSettings, doc("the tools the dialogue offers")] = msgspec.field(
        default_factory=ToolSettings)
    dialogue: Annotated[DialogueSettings, doc("the dialogue actor")] = msgspec.field(
        default_factory=DialogueSettings)
    tts: Annotated[TtsSettings, doc("speech synthesis")] = msgspec.field(default_factory=TtsSettings)
    auth: Annotated[AuthSettings, doc("accounts and tokens")] = msgspec.field(
        default_factory=AuthSettings)
    edge: Annotated[EdgeSettings, doc("the edge: HTTP, WebSockets, WebRTC and their limits")] = (
        msgspec.field(default_factory=EdgeSettings))
    asr: Annotated[AsrSettings, doc("speech recognition")] = msgspec.field(default_factory=AsrSettings)
    actors: Annotated[ActorSettings, doc("every actor")] = msgspec.field(default_factory=ActorSettings)
    knowledge: Annotated[KnowledgeSettings, doc("the knowledge base")] = msgspec.field(
        default_factory=KnowledgeSettings)
    vision: Annotated[VisionSettings, doc(
        "describing photos: a xiaozhi device's camera, images sent on `/ws`")] = msgspec.field(
        default_factory=VisionSettings)
    telemetry: Annotated[TelemetrySettings, doc("metrics and traces")] = msgspec.field(
        default_factory=TelemetrySettings)
    prices: Annotated[list[PriceConfig], doc(
        "what each provider and model costs, for usage and cost analytics (`vagent stats`); "
        "unpriced use costs 0")] = msgspec.field(default_factory=list)


class ConfigError(ValueError):
    pass


def config_path() -> Path | None:
    explicit = os.environ.get("VAGENT_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path("vagent.toml")
    return default if default.exists() else None


def parse(text: str, source: str = "vagent.toml") -> Config:
    try:
        return msgspec.convert(tomllib.loads(text), Config)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load() -> Config:
    """The settings file with the environment's overrides. Called once where a process
    starts; everything else gets the result as an argument."""
    path = config_path()
    config = Config() if path is None else parse(path.read_text(), str(path))
    for env_name, setting in ENV_VERBATIM.items():
        if env_name in os.environ:
            _override(config, setting, env_name, os.environ[env_name])
    for env_name, setting in ENV_OVERRIDES.items():
        value = os.environ.get(env_name, "").strip()
        if value:  # set but empty counts as unset
            _override(config, setting, env_name, value)
    return config


# Environment variables that override one setting each (deployments set them instead of a
# file). A list setting takes comma-separated values.
ENV_OVERRIDES: dict[str, str] = {
    "VAGENT_TTS_MAX_CHARS": "tts.max_chars",
    "VAGENT_TTS_MAX_TURN_CHARS": "tts.max_turn_chars",
    "VAGENT_TTS_PROVIDER": "tts.provider",
    "VAGENT_TTS_VOICE": "tts.voice",
    "VAGENT_TTS_PARALLEL": "tts.parallel",
    "VAGENT_TTS_CACHE_MB": "tts.cache_mb",
    "VAGENT_ELEVENLABS_MODEL": "tts.elevenlabs.model",
    "VAGENT_ELEVENLABS_SAMPLE_RATE": "tts.elevenlabs.sample_rate",
    "VAGENT_ELEVENLABS_URL": "tts.elevenlabs.url",
    "VAGENT_ASR_ENGINE": "asr.engine",
    "VAGENT_BARGE_IN_MIN_MS": "asr.barge_in_min_ms",
    "VAGENT_ASR_PARTIAL_MS": "asr.partial_ms",
    "VAGENT_VAD_THRESHOLD": "asr.vad.threshold",
    "VAGENT_VAD_SILENCE_MS": "asr.vad.silence_ms",
    "VAGENT_VAD_PREROLL_MS": "asr.vad.preroll_ms",
    "VAGENT_VAD_MIN_SPEECH_MS": "asr.vad.min_speech_ms",
    "VAGENT_ASR_MAX_UTTERANCE_MS": "asr.vad.max_utterance_ms",
    "VAGENT_DEEPGRAM_URL": "asr.deepgram.url",
    "VAGENT_DEEPGRAM_MODEL": "asr.deepgram.model",
    "VAGENT_DEEPGRAM_LANGUAGE": "asr.deepgram.language",
    "VAGENT_ACK_WAIT": "actors.ack_wait",
    "VAGENT_XIAOZHI_WAKE_WORDS": "edge.xiaozhi.wake_words",
    "VAGENT_EMBED_THREADS": "knowledge.embed_threads",
    "VAGENT_KB_MAX_CHUNKS": "knowledge.max_chunks",
    "VAGENT_VISION_BASE_URL": "vision.base_url",
    "VAGENT_VISION_MODEL": "vision.model",
}
# Taken as they are, even empty or with spaces: a prompt is text, not a value to trim.
ENV_VERBATIM: dict[str, str] = {
    "VAGENT_SYSTEM_PROMPT": "dialogue.system_prompt",
}


def _override(config: Config, setting: str, env_name: str, value: str) -> None:
    *parents, name = setting.split(".")
    section: Any = config
    for parent in parents:
        section = getattr(section, parent)
    kind = typing.get_type_hints(type(section), include_extras=True)[name]
    raw: Any = value
    bare = typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind
    if typing.get_origin(bare) is list:
        raw = [item.strip() for item in value.split(",") if item.strip()]
    try:
        setattr(section, name, msgspec.convert(raw, kind, strict=False))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{env_name}={value!r} (the setting {setting}): {exc}") from None


def secret(env_name: str | None) -> str | None:
    """A key from the environment, or from the secrets file when the environment lacks it."""
    if not env_name:
        return None
    if env_name in os.environ:
        return os.environ[env_name]
    return _secrets_file().get(env_name)


def _secrets_file() -> dict[str, str]:
    path = os.environ.get("VAGENT_SECRETS_FILE")
    if not path:
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out
