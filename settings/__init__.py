"""Typed settings: read once where a process starts, passed to what needs them."""
