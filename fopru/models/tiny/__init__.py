"""Seeded random tiny models of every family, built from small configs, for tests (no download)."""
