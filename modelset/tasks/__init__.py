"""Thin Prefect tasks over the core stages: retries, cache keys, artifacts."""
