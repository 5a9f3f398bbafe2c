"""Tiny real-architecture models and data for tests, the demo and the benches."""
