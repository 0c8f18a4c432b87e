"""The dialogue actor and its helpers: history, sentences, intents, providers, the tool-call adapter."""
