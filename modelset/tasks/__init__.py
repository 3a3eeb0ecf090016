"""Thin Prefect tasks over the core stages: retries, cache keys, tags, artifacts."""
