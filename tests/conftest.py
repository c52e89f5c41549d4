"""Test-wide settings: no hub access and a reproducible hypothesis profile."""

import os

# Set before anything imports huggingface_hub: a hub miss otherwise retries for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch
from hypothesis import settings

settings.register_profile("fopru", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("fopru")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
