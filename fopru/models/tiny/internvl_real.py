"""InternVL3 at its checkpoints' structure with small widths (``tiny:internvl_real``): 448-pixel crops of 14-pixel
patches (32 x 32 patches + [CLS], 16 x 16 tokens after the 0.5 pixel shuffle), up to 12 tiles plus a thumbnail,
``vision_feature_layer = -1`` (the last layer); 2 InternViT layers instead of 24 to stay fast.

Where the values come from: transformers' ``InternVLVisionConfig`` defaults (image 448, patch 14, 24 layers: the
InternViT-300M of InternVL3-1B/2B/8B) and ``InternVLConfig`` defaults (``downsample_ratio`` 0.5,
``vision_feature_layer`` -1, ``vision_feature_select_strategy`` "default", ``image_seq_length`` 256), which the
checkpoints' conversion script (``convert_internvl_weights_to_hf.py``) leaves unchanged; its image processor is
``GotOcr2ImageProcessor`` at 448 x 448 with ImageNet mean and std and the class defaults ``min_patches`` 1,
``max_patches`` 12, and ``InternVLProcessor`` turns ``crop_to_patches`` on.
"""

from __future__ import annotations

from pathlib import Path

from fopru.models.tiny.internvl import save

IMAGE_SIZE, PATCH_SIZE, MAX_TILES, VISION_LAYERS = 448, 14, 12, 2


def build(folder: Path) -> None:
    """Save the seeded random InternVL of the checkpoints' crop structure and its processor into ``folder``."""
    save(folder, vision_layers=VISION_LAYERS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, max_tiles=MAX_TILES)
