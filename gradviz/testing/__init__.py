"""Helpers for testing gradviz and measuring it (used by tests/ and benchmarks/)."""
