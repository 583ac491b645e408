"""Aggregation of raw measures into per-cell statistics, in PostgreSQL."""
