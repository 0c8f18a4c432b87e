# Everyday commands (https://github.com/casey/just); each is one `uv run` away without it.

# Start the whole stack: embedded NATS, every actor, the read models
up:
    uv run vagent up

# The test suite (real nats-server, real DuckDB)
test *args:
    uv run pytest {{args}}

# Lint
lint:
    uv run ruff check .

# An OpenAI-compatible echo server on :8080, where vagent looks for a local LLM by default
echo-llm:
    uv run vagent echo-llm --port 8080

# Measured publish rates and actor-hop latency on this machine
bench:
    uv run vagent bench bus

# Regenerate docs/configuration.md from the settings' declarations (a test checks it is current)
docs:
    uv run python -m settings.reference > docs/configuration.md

# What CI runs
ci:
    bash .ci/run
