"""The write side of accounts, tokens, devices, assistants and documents: decisions and their events."""
