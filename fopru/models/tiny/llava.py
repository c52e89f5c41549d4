"""Tiny LLaVA-1.5: CLIP vision (6 x 6 patches + [CLS]), MLP projector, a 2-layer Llama with GQA."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from fopru.models.llava import llava_processor
from fopru.models.word_tokenizer import word_tokenizer

IMAGE_SIZE, PATCH_SIZE = 48, 8

#: Two samples for the adapter contract tests: prompts in the tiny vocabulary and the (width, height) of their
#: images.
EXAMPLE_PROMPTS = (
    "USER: <image>\nwhat is the shape in this image ? ASSISTANT:",
    "USER: <image>\nwhat color ? ASSISTANT:",
)
EXAMPLE_SIZES = ((48, 48), (48, 48))


def clip_and_llama(tokenizer: PreTrainedTokenizerFast, max_positions: int) -> tuple[CLIPVisionConfig, LlamaConfig]:
    """The tiny CLIP vision tower (4 layers, 6 x 6 patches + [CLS]) and Llama (2 layers, GQA 4/2) of the LLaVAs."""
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return vision, text


def scale_weights(model: torch.nn.Module) -> None:
    """Wider random weights, so that greedy outputs depend on the image."""
    for parameter in model.parameters():
        parameter.data.mul_(4.0)


def build(folder: Path) -> None:
    """Save a seeded random tiny LLaVA and its processor into ``folder``."""
    tokenizer = word_tokenizer(["<image>"])
    image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))  # type: ignore[arg-type]
    vision, text = clip_and_llama(tokenizer, max_positions=256)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    scale_weights(model)
    model.save_pretrained(folder)
    llava_processor(tokenizer, IMAGE_SIZE, PATCH_SIZE).save_pretrained(folder)
