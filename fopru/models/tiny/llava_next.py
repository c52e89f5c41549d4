"""Tiny LLaVA-NeXT: CLIP vision (6 x 6 patches + [CLS] per crop), AnyRes tiles up to 2 x 2, a 2-layer Llama (GQA)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from fopru.models.tiny.llava import IMAGE_SIZE, PATCH_SIZE, clip_and_llama, scale_weights
from fopru.models.word_tokenizer import word_tokenizer

# (height, width) resolutions the image is resized and padded to before tiling: 1 x 2, 2 x 1 and 2 x 2 tiles.
GRID_PINPOINTS = [[48, 96], [96, 48], [96, 96]]

#: Two samples for the adapter contract tests: prompts in the tiny vocabulary and the (width, height) of their
#: images (different crop counts).
EXAMPLE_PROMPTS = (
    "USER: <image>\nwhat is the shape in this image ? ASSISTANT:",
    "USER: <image>\nwhat color ? ASSISTANT:",
)
EXAMPLE_SIZES = ((70, 40), (50, 90))


def build(folder: Path) -> None:
    """Save a seeded random tiny LLaVA-NeXT and its processor into ``folder``."""
    tokenizer = word_tokenizer(["<image>"])
    image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))  # type: ignore[arg-type]
    vision, text = clip_and_llama(tokenizer, max_positions=512)
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    scale_weights(model)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
