"""Test-wide settings: no hub access, a reproducible hypothesis profile, opt-in slow tests."""

import os

# Set before anything imports huggingface_hub: a hub miss otherwise retries for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch
from hypothesis import settings

settings.register_profile("fopru", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("fopru")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
