"""Evaluations: scripted conversations run against a temporary stack, judged per turn."""
