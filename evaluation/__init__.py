"""Evaluation on public data: M4 protocol and the NAB anomaly benchmark."""
