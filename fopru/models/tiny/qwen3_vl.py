"""Tiny Qwen3-VL (``tiny:qwen3_vl``): a 4-block ViT (patch 4, 8 x 8 learned position grid, 2 x 2 merger) with
DeepStack levels from blocks 1 and 2, a 2-layer Qwen3 LLM with GQA and interleaved M-RoPE.

DeepStack level 0 (block 1's output) is added to language layer 0's output, level 1 (block 2's) to layer 1's.
The examples are the tiny Qwen2-VL's: 56 x 56 and 84 x 56 images give 7 x 7 and 7 x 10 merged tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from fopru.models.qwen3_vl import ImageOnlyQwen3VLProcessor
from fopru.models.tiny.qwen2_vl import (  # noqa: F401  (the examples are shared)
    EXAMPLE_PROMPTS,
    EXAMPLE_SIZES,
    MERGE_SIZE,
    PATCH_SIZE,
    VISION_SPECIALS,
    save,
    special_token_ids,
)
from fopru.models.word_tokenizer import word_tokenizer

#: The vision blocks feeding DeepStack (the real checkpoints tap 3 of 24 or 27 blocks; 2 of 4 here).
DEEPSTACK_LAYERS = (1, 2)


def text_config(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        # head_dim 16: 8 rotary frequencies, interleaved over (t, h, w) as in the real checkpoints
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def image_processor() -> Qwen2VLImageProcessorPil:
    """The Qwen3-VL checkpoints' image processor settings (mean and std 0.5) at the tiny patch size."""
    factor = PATCH_SIZE * MERGE_SIZE
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 96 * 96},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build(folder: Path) -> None:
    """Save a seeded random tiny Qwen3-VL and its (image-only) processor into ``folder``."""
    tokenizer = word_tokenizer(VISION_SPECIALS)
    vision = {
        "depth": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,  # the mergers' output: the LLM width
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": list(DEEPSTACK_LAYERS),
    }
    config = Qwen3VLConfig(
        text_config=text_config(tokenizer),
        vision_config=vision,
        tie_word_embeddings=False,
        **special_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config)
    save(model, ImageOnlyQwen3VLProcessor(image_processor=image_processor(), tokenizer=tokenizer), folder)
