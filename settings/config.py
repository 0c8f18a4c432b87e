"""vagent's settings file (`vagent.toml`, or the path in `VAGENT_CONFIG`), read once where a
process starts (`load`, which also applies the environment variables of ENV_OVERRIDES) and
passed to what needs it; tests build a `Config` themselves (`parse` reads no environment).

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


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    base_url: str
    model: str
    api_key_env: str | None = None  # the environment variable that holds the key
    timeout: float = 60.0  # whole request
    first_token_timeout: float = 15.0  # until the stream's first chunk
    max_tokens: int | None = None  # answer length cap; small local models may ramble on
    # Ask small models for a tool call with the question alone first (see ProviderChain._probe).
    tool_probe: bool = False


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    failures: int = 3  # this many failures …
    window: float = 60.0  # … within this many seconds open the breaker
    cooldown: float = 30.0  # then, after this long, one probe request may try again


class LLMSettings(msgspec.Struct, forbid_unknown_fields=True):
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    local_model: str = "qwen2.5-0.5b"  # qwen2.5-0.5b | qwen2.5-1.5b (extra qwen-1-5b) | smollm2-135m


class WebhookTool(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str
    url: str
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}})
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None


class McpServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    command: list[str] | None = None  # stdio transport
    url: str | None = None  # streamable HTTP transport
    env: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None


class ToolSettings(msgspec.Struct, forbid_unknown_fields=True):
    # knowledge_search is offered only to assistants with documents (see actors/dialogue/actor.py).
    builtins: list[str] = msgspec.field(
        default_factory=lambda: ["get_time", "calculator", "knowledge_search"])
    webhooks: list[WebhookTool] = msgspec.field(default_factory=list)
    mcp: list[McpServerConfig] = msgspec.field(default_factory=list)
    timeout: float = 10.0  # per call, unless the tool sets its own
    max_steps: int = 4  # LLM → tools → LLM rounds in one turn
    max_result_chars: int = 8000  # longer results are cut (the LLM's context is small)


class DialogueSettings(msgspec.Struct, forbid_unknown_fields=True):
    system_prompt: str = (
        "You are vagent, a friendly voice assistant. Answer in one to three short, "
        "spoken-style sentences. Use a tool when it helps."
    )
    history_tokens: int = 3000  # history budget; the oldest turns are dropped first
    first_clause_chars: int = 24  # the first sentence may be cut at a comma after this many
    exit_phrases: list[str] = msgspec.field(default_factory=lambda: [
        "bye", "goodbye", "bye bye", "see you", "that's all", "再见", "拜拜"])
    goodbye: str = "Goodbye!"


class Argon2Settings(msgspec.Struct, forbid_unknown_fields=True):
    """argon2id cost (RFC 9106's second recommended profile). Changing it rehashes each
    password at its owner's next login."""

    time_cost: int = 3
    memory_kib: int = 65_536  # 64 MiB per hash
    parallelism: int = 4
    # Per edge process: at most this many hashes at once (memory is concurrency × memory_kib,
    # and the CPU stays free enough for real-time turns) …
    concurrency: int = 2
    queue: int = 8  # … and this many waiting for one; more get 503 busy (Retry-After)


class SmtpSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: str | None = None  # set to mail verification codes
    port: int = 587
    username: str | None = None
    password_env: str | None = None  # the environment variable holding the SMTP password
    sender: str = "vagent <no-reply@localhost>"
    starttls: bool = True
    timeout: float = 10.0


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Tokens are HS256 JWTs signed with this secret; without it, a random key is created
    # once in the data directory (`jwt.key`, mode 0600). Every edge must share the key.
    jwt_secret_env: str = "VAGENT_JWT_SECRET"
    access_ttl: float = 900.0  # 15 min
    refresh_ttl: float = 30 * 86_400.0
    device_token_ttl: float = 365 * 86_400.0
    password_min_length: int = 10
    argon2: Argon2Settings = msgspec.field(default_factory=Argon2Settings)
    lockout_failures: int = 5  # this many failed logins in a row …
    lockout_seconds: float = 900.0  # … lock the account for this long
    rate_limit: int = 20  # login/register/activation requests per client IP …
    rate_window: float = 60.0  # … in this many seconds
    trust_forwarded_for: bool = False  # behind a proxy: the client IP is X-Forwarded-For's first
    # Email verification codes: "auto" mails them when [auth.smtp] has a host and is off
    # otherwise; "log" writes them to the log (development); "off".
    email_verification: Literal["auto", "smtp", "log", "off"] = "auto"  # checked when read
    code_ttl: float = 900.0  # verification and device activation codes
    smtp: SmtpSettings = msgspec.field(default_factory=SmtpSettings)


class XiaozhiConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Heard before a typed turn, these are dropped like the built-in ones ("你好小智", "hi xiaozhi").
    wake_words: list[str] = msgspec.field(default_factory=list)


class EdgeSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_048_576  # larger request bodies get 413
    max_upload_bytes: int = 20 * 1_048_576  # a larger document upload gets 413, nothing stored
    # Per user, over the documents not deleted: an upload past either gets 413 quota_exceeded.
    max_documents_per_user: int = 100
    max_document_bytes_per_user: int = 100 * 1_048_576
    # HTTP: a request's headers must be complete this soon after the connection opens (or
    # after the previous response); a silent or trickling (slowloris) client is closed.
    header_timeout: float = 10.0
    # HTTP: a request's whole body must arrive this soon after its headers (trickling does not
    # extend it): past it, 408 and closed. Raise it for large uploads over slow links.
    body_timeout: float = 60.0
    # WebSocket: the client's first message must come this soon after the accept (close 4408).
    first_message_timeout: float = 30.0
    # Real-time connections (xiaozhi, /ws, WebRTC) without a token are accepted and talk to
    # the default assistant, as a local install expects; turn off before exposing the edge.
    anonymous: bool = True
    # Per edge process: real-time sessions (more: close 1013) and open sockets of any kind,
    # idle ones too (more: 503 too_many_connections, then closed).
    max_connections: int = 1000
    # Per client address (X-Forwarded-For's first with auth.trust_forwarded_for): real-time
    # connections at once over /ws, xiaozhi and WebRTC (more: close 1013, or 429). Enough for
    # a household behind one NAT.
    max_sessions_per_address: int = 20
    # Per edge process: WebRTC offers being negotiated at once (more: 503 busy, Retry-After).
    max_offers_in_progress: int = 4
    max_frame_bytes: int = 65_536  # one WebSocket message, text or binary
    max_messages_per_second: int = 100  # per connection, averaged over a few seconds
    hello_timeout: float = 10.0  # xiaozhi: the device's hello must come this soon
    # A typed turn (`user.text`, xiaozhi `listen detect`) longer than this is refused: it
    # becomes a prompt, a log entry and read-model rows, and no one types more in one go.
    max_text_chars: int = 2000
    # Per session, typed turns: at most this many waiting for their answer, and this many a
    # second on average (bursts of `turn_burst`); more get `error too_many_turns`. A person
    # waits for the answer or adds a correction or two; a flood would queue in every actor.
    max_waiting_turns: int = 3
    max_turns_per_second: float = 1.0
    turn_burst: int = 5
    ice_servers: list[str] = msgspec.field(default_factory=list)  # WebRTC, e.g. stun:host:3478
    xiaozhi: XiaozhiConfig = msgspec.field(default_factory=XiaozhiConfig)


class ElevenLabsConfig(msgspec.Struct, forbid_unknown_fields=True):
    model: str = "eleven_flash_v2_5"  # their low-latency model
    # Raw PCM is asked for (`output_format=pcm_<rate>`), so nothing needs decoding.
    sample_rate: int = 24000
    url: str | None = None  # another base URL: a regional endpoint, or the tests' local server


class TtsSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The voice, and what one input may make the TTS do."""

    # piper, elevenlabs or an installed plugin's; None: elevenlabs when ELEVENLABS_API_KEY is
    # set, else piper.
    provider: str | None = None
    voice: str | None = None  # a Piper voice file or an ElevenLabs voice id; None: the default
    # Syntheses at a time across sessions (a turn's first sentence goes first).
    parallel: Annotated[int, msgspec.Meta(ge=1)] = 1
    cache_mb: float = 32.0  # quick replies kept synthesized
    elevenlabs: ElevenLabsConfig = msgspec.field(default_factory=ElevenLabsConfig)

    # Characters per provider call; longer text is synthesized in pieces. Piper's memory and
    # time grow with a call's audio (~160 MB at the peak for 200 characters, 7–11 s of
    # speech; 8,000 unpunctuated characters took GBs), and a synthesizer slot serves no
    # other session during a call: another session waits one piece at most.
    max_chars: int = 200
    # Characters one turn may speak (1–2 minutes): an answer, greeting or echo beyond it is
    # not read out whole. A turn's audio is held until it ends (its recording), so this also
    # bounds a session's memory: ~5 MB of PCM at Piper's 22 kHz.
    max_turn_chars: int = 2000


class VadConfig(msgspec.Struct, forbid_unknown_fields=True):
    threshold: float = 0.5  # silero speech probability that starts speech
    release: float | None = None  # below this, silence (None: threshold - 0.15)
    silence_ms: int = 400  # silence that ends an utterance (auto listen mode)
    preroll_ms: int = 250  # audio kept from before the onset
    min_speech_ms: int = 96  # shorter speech never opens an utterance
    max_utterance_ms: int = 30_000  # an utterance is cut here (memory, and a stuck VAD)

    @property
    def release_threshold(self) -> float:
        return self.release if self.release is not None else max(0.0, self.threshold - 0.15)


class DeepgramConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: str = "wss://api.deepgram.com"  # its WebSocket base (tests: a local server)
    model: str = "nova-3"
    language: str = "en"


class AsrSettings(msgspec.Struct, forbid_unknown_fields=True):
    # auto: deepgram when DEEPGRAM_API_KEY is set (environment or secrets file), else moonshine.
    engine: Literal["auto", "moonshine", "deepgram"] = "auto"
    barge_in_min_ms: int = 300  # speech over the assistant this long interrupts it
    partial_ms: int = 400  # moonshine: audio between partial transcripts (CPU vs freshness)
    vad: VadConfig = msgspec.field(default_factory=VadConfig)
    deepgram: DeepgramConfig = msgspec.field(default_factory=DeepgramConfig)


class ActorSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Seconds before an unacknowledged message is redelivered; None: each actor's own (30,
    # the indexer 60).
    ack_wait: float | None = None


class KnowledgeSettings(msgspec.Struct, forbid_unknown_fields=True):
    embed_threads: int = 0  # the embedding model's threads; 0: onnxruntime's choice
    # Chunks per document (~3 MB of text): a longer one is refused at upload when its size
    # tells, else fails at indexing with its count.
    max_chunks: int = 5000


class Config(msgspec.Struct, forbid_unknown_fields=True):
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    tools: ToolSettings = msgspec.field(default_factory=ToolSettings)
    dialogue: DialogueSettings = msgspec.field(default_factory=DialogueSettings)
    tts: TtsSettings = msgspec.field(default_factory=TtsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    edge: EdgeSettings = msgspec.field(default_factory=EdgeSettings)
    asr: AsrSettings = msgspec.field(default_factory=AsrSettings)
    actors: ActorSettings = msgspec.field(default_factory=ActorSettings)
    knowledge: KnowledgeSettings = msgspec.field(default_factory=KnowledgeSettings)


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
    if "VAGENT_SYSTEM_PROMPT" in os.environ:
        config.dialogue.system_prompt = os.environ["VAGENT_SYSTEM_PROMPT"]
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
}


def _override(config: Config, setting: str, env_name: str, value: str) -> None:
    *parents, name = setting.split(".")
    section: Any = config
    for parent in parents:
        section = getattr(section, parent)
    kind = typing.get_type_hints(type(section), include_extras=True)[name]
    raw: Any = value
    if typing.get_origin(kind) is list:
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
