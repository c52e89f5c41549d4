"""Tiny InternVL3 (``tiny:internvl``): a 4-layer InternViT on 32-pixel crops (patch 4: 8 x 8 patches + [CLS]),
pixel shuffle 0.5 (4 x 4 tokens per crop), up to 4 tiles plus a thumbnail, a 2-layer Qwen2 LLM with GQA.

A 64 x 64 image is cut into 2 x 2 tiles plus the thumbnail (5 crops, 80 tokens); a 70 x 40 one into 2 x 1 tiles
plus the thumbnail (3 crops, 48 tokens); a square image up to 32 pixels is one crop without thumbnail.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from fopru.models.internvl import IMAGE_PROMPT, ImageOnlyInternVLProcessor
from fopru.models.word_tokenizer import word_tokenizer

IMAGE_SIZE, PATCH_SIZE, MAX_TILES = 32, 4, 4
#: The named special tokens ``InternVLProcessor`` reads from its tokenizer.
NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": IMAGE_PROMPT,
    "video_token": "<video>",
}

#: Two samples for the adapter contract tests: prompts in the tiny vocabulary and the (width, height) of their
#: images (5 and 3 crops).
EXAMPLE_PROMPTS = (
    f"USER : {IMAGE_PROMPT} what is the shape in this image ? ASSISTANT :",
    f"USER : {IMAGE_PROMPT} what color ? ASSISTANT :",
)
EXAMPLE_SIZES = ((64, 64), (70, 40))


def tokenizer() -> PreTrainedTokenizerFast:
    """The tiny word tokenizer with InternVL's named image tokens."""
    words = word_tokenizer(tuple(NAMED_TOKENS.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=words.backend_tokenizer,
        bos_token=words.bos_token,
        eos_token=words.eos_token,
        pad_token=words.pad_token,
        unk_token=words.unk_token,
        padding_side="left",
        extra_special_tokens=NAMED_TOKENS,
    )


def image_processor(image_size: int, max_tiles: int) -> GotOcr2ImageProcessorPil:
    """The checkpoints' image processor at ``image_size`` (the processor turns on ``crop_to_patches``)."""
    return GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        max_patches=max_tiles,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def build(folder: Path) -> None:
    """Save a seeded random tiny InternVL and its (image-only) processor into ``folder``."""
    save(folder, vision_layers=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, max_tiles=MAX_TILES)


def save(folder: Path, vision_layers: int, image_size: int, patch_size: int, max_tiles: int) -> None:
    """A seeded random InternVL at small widths (InternViT 32 wide, Qwen2 64 wide, 2 layers) with the given crop
    structure, and its processor (ImageNet mean and std, as the checkpoints), saved into ``folder``."""
    words = tokenizer()
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": 4,
        "attention_bias": True,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    text = {
        "model_type": "qwen2",
        "vocab_size": len(words),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": words.bos_token_id,
        "eos_token_id": words.eos_token_id,
        "pad_token_id": words.pad_token_id,
    }
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=int(words.convert_tokens_to_ids(IMAGE_PROMPT)),  # type: ignore[arg-type]
        image_seq_length=(image_size // patch_size // 2) ** 2,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    embeddings = model.model.vision_tower.embeddings
    # [CLS] and position embeddings start at zero; random ones give [CLS] and patches distinct attention.
    embeddings.cls_token.data.normal_()
    embeddings.position_embeddings.data.normal_()
    for parameter in model.parameters():  # wider random weights so that greedy outputs depend on the image
        parameter.data.mul_(4.0)
    model.save_pretrained(folder)
    processor = ImageOnlyInternVLProcessor(
        image_processor=image_processor(image_size, max_tiles),
        tokenizer=words,
        image_seq_length=config.image_seq_length,
    )
    processor.save_pretrained(folder)
