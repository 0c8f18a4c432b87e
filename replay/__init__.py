"""Recorded sessions: their log read back (turns, stage latencies), replayed through today's
actors, exported as audio. An orchestration layer like `cli/`, with no printing of its own."""
