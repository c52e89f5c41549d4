"""Tiny Qwen2-VL (``tiny:qwen2_vl``): a 4-block ViT (patch 4, 2 x 2 merger), a 2-layer Qwen2 LLM with GQA and
M-RoPE; the tiny Qwen2.5-VL (:mod:`fopru.models.tiny.qwen25_vl`) shares its parts.

A 56 x 56 image gives 14 x 14 patches, i.e. 7 x 7 = 49 merged tokens. The Qwen2.5-VL tower uses 16-pixel windows
(2 x 2 merged tokens per window, 16 windows for that image, uneven at the border) in blocks 0 and 2 and full
attention in blocks 1 and 3 (the last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from fopru.models.qwen2_vl import IMAGE_PROMPT, ImageOnlyQwen2VLProcessor
from fopru.models.word_tokenizer import word_tokenizer

PATCH_SIZE, MERGE_SIZE, WINDOW_SIZE = 4, 2, 16
VISION_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


_TOKEN_NAMES = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

#: Two samples for the adapter contract tests: prompts in the tiny vocabulary and the (width, height) of their
#: images (multiples of 28 with different grids: 7 x 7 and 7 x 10 merged tokens).
EXAMPLE_PROMPTS = (
    f"USER : {IMAGE_PROMPT} what is the shape ? ASSISTANT :",
    f"USER : {IMAGE_PROMPT} what is the color of the shape in this image ? answer with one word . ASSISTANT :",
)
EXAMPLE_SIZES = ((56, 56), (84, 56))


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The model config's special-token ids, inside the tiny vocabulary."""
    return {name: int(tokenizer.convert_tokens_to_ids(token)) for name, token in _TOKEN_NAMES.items()}  # type: ignore[arg-type]


def text_config(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        # head_dim 16: 8 rotary frequencies split over (t, h, w)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def image_processor() -> Qwen2VLImageProcessorPil:
    factor = PATCH_SIZE * MERGE_SIZE
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 96 * 96},
    )


def save(model: Any, processor: Any, folder: Path) -> None:
    for parameter in model.parameters():  # wider random weights so that greedy outputs depend on the image
        parameter.data.mul_(4.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build(folder: Path) -> None:
    """Save a seeded random tiny Qwen2-VL and its (image-only) processor into ``folder``."""
    tokenizer = word_tokenizer(VISION_SPECIALS)
    vision = {
        "depth": 4,
        "embed_dim": 32,
        "hidden_size": 64,  # the merger's output: the LLM width
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(text_config=text_config(tokenizer), vision_config=vision, **special_token_ids(tokenizer))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    save(model, ImageOnlyQwen2VLProcessor(image_processor=image_processor(), tokenizer=tokenizer), folder)
