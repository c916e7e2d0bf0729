"""Measuring candidates against the reference: accuracy, latency, reports."""
