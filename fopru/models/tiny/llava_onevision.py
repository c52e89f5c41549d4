"""Tiny LLaVA-OneVision (``tiny:llava_onevision``): SigLIP vision (6 x 6 patches per crop, no [CLS]), AnyRes tiles
up to 4 x 4, a 2-layer Qwen2 LLM (GQA, width 128).

The grid pinpoints make the model's ``anyres_max_9`` downsampling trigger on the second example: a 200 x 150 image
is tiled 4 x 4 (a 24 x 24 patch grid), unpadded to 18 x 24 rows x cols (432 > 1.1**2 * 9 * 36 patches) and
bilinearly resampled to 15 x 20; the first example (70 x 40) is tiled 1 x 2 and unpadded to 6 x 10, not resampled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil

from fopru.models.llava_onevision import ImageOnlyLlavaOnevisionProcessor
from fopru.models.word_tokenizer import word_tokenizer

IMAGE_SIZE, PATCH_SIZE = 48, 8
# (height, width) resolutions the image is resized and padded to before tiling: 1 x 2, 2 x 1, 2 x 2 and 4 x 4 tiles.
GRID_PINPOINTS = [[48, 96], [96, 48], [96, 96], [192, 192]]

#: Two samples for the adapter contract tests: prompts in the tiny vocabulary and the (width, height) of their
#: images (3 and 17 crops; the second one's tile grid is downsampled).
EXAMPLE_PROMPTS = (
    "USER: <image>\nwhat is the shape in this image ? ASSISTANT:",
    "USER: <image>\nwhat color ? ASSISTANT:",
)
EXAMPLE_SIZES = ((70, 40), (200, 150))


def build(folder: Path) -> None:
    """Save a seeded random tiny LLaVA-OneVision and its (image-only) processor into ``folder``."""
    tokenizer = word_tokenizer(["<image>", "<video>"])
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "vision_use_head": False,
    }
    text = {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        # Wider than the other tiny LLMs: the 300 tokens of the resampled example's tile grid keep 75 at keep=0.25,
        # and a determinantal selection (CDPruner) over projected tokens needs their width above the picks.
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
        video_token_index=int(tokenizer.convert_tokens_to_ids("<video>")),  # type: ignore[arg-type]
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config)
    for parameter in model.parameters():  # wider random weights so that greedy outputs depend on the image
        parameter.data.mul_(4.0)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=GRID_PINPOINTS
    )
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        image_token="<image>",
        video_token="<video>",
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
