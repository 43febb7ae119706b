"""Ingest and validation, period/family detection, windows and tasks, metrics, baselines."""
