"""Benchmarks: dataset loaders, prompts and the official metrics they are scored with."""
