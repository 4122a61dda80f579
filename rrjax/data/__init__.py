"""Data: sources, deterministic views and multi-host loaders (SPEC §4, §6)."""
