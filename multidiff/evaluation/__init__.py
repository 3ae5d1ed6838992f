"""Evaluations per modality (sample quality tables, completion and vocoding comparisons), written
through one table writer (tables.py)."""
