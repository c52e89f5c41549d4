"""Tiny Qwen2.5-VL (``tiny:qwen25_vl``): the tiny Qwen2-VL's parts with 16-pixel windows in blocks 0 and 2 and
full attention in blocks 1 and 3 (the last)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from fopru.models.qwen2_vl import ImageOnlyQwen25VLProcessor
from fopru.models.tiny.qwen2_vl import (  # noqa: F401  (the examples are shared)
    EXAMPLE_PROMPTS,
    EXAMPLE_SIZES,
    MERGE_SIZE,
    PATCH_SIZE,
    VISION_SPECIALS,
    WINDOW_SIZE,
    image_processor,
    save,
    special_token_ids,
    text_config,
)
from fopru.models.word_tokenizer import word_tokenizer


def build(folder: Path) -> None:
    """Save a seeded random tiny Qwen2.5-VL and its (image-only) processor into ``folder``."""
    tokenizer = word_tokenizer(VISION_SPECIALS)
    vision = {
        "depth": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": 64,  # the merger's output: the LLM width
        "num_heads": 4,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
        "window_size": WINDOW_SIZE,
        "fullatt_block_indexes": [1, 3],
    }
    config = Qwen2_5_VLConfig(text_config=text_config(tokenizer), vision_config=vision, **special_token_ids(tokenizer))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    save(model, ImageOnlyQwen25VLProcessor(image_processor=image_processor(), tokenizer=tokenizer), folder)
