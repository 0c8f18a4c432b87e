"""The tts actor: assistant sentences become paced audio frames and tts.* events."""
