"""Metrics and traces: what an operator watches a running vagent with."""
