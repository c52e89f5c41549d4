"""Sequence assembly: every image's placeholders replaced by its kept tokens, positions, left padding, and each
image's prompt text for text-guided strategies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from fopru.errors import ConfigError
from fopru.models.inputs import KeptImage, LanguageInputs
from fopru.reorder.base import Positions


def assemble_sequences(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    base_positions: torch.Tensor,
    image_token_id: int,
    images: Sequence[KeptImage],
    positions: Positions,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> LanguageInputs:
    """Replace every image's N placeholder tokens by its kept tokens, and give every token its position.

    Args:
        input_ids, attention_mask: the processor's (B, L_full) prompt with N placeholders per image.
        base_positions: (P, B, L_full) position ids of the unpruned prompt (LLaVA: 0.. over real tokens; Qwen:
            the model's own M-RoPE index).
        image_token_id: the placeholder id.
        images: the kept tokens of every image, in the order images appear across the batch.
        positions: ``original``: every token keeps its unpruned position (pruned columns are dropped; text after
            an image keeps its offset). ``compact``: tokens are re-indexed 0..L-1 over the pruned sequence.
            Adapters resolve ``auto`` first (:meth:`TargetModel.resolve_positions`).
        embed_tokens: the language model's input embedding.

    Samples are re-padded on the left to the longest pruned sequence.
    """
    image_iter = iter(images)
    rows: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = []
    images_per_sample: list[int] = []
    for sample in range(input_ids.shape[0]):
        real = attention_mask[sample].bool()
        ids = input_ids[sample, real]
        sample_positions = base_positions[:, sample, real]
        embeds = embed_tokens(ids)
        placeholders = (ids == image_token_id).nonzero().flatten().tolist()
        pieces: list[torch.Tensor] = []
        piece_positions: list[torch.Tensor] = []
        piece_visual: list[torch.Tensor] = []
        cursor = 0
        visual = 0
        images_per_sample.append(0)
        while placeholders:
            try:
                image = next(image_iter)
            except StopIteration:
                raise ConfigError(
                    f"sample {sample} has {len(placeholders)} more image placeholder tokens than the images given"
                ) from None
            start = placeholders[0]
            span = placeholders[: image.num_tokens]
            if len(span) != image.num_tokens or span[-1] - start + 1 != image.num_tokens:
                raise ConfigError(
                    f"sample {sample}: expected {image.num_tokens} consecutive placeholder tokens for an image at "
                    f"position {start}, found {len(span)}; the prompt and the images do not match"
                )
            placeholders = placeholders[image.num_tokens :]
            images_per_sample[-1] += 1
            pieces += [embeds[cursor:start], image.embeddings.to(embeds.dtype)]
            if positions == "compact":  # renumbered 0..L-1 below: the indices need not name placeholders
                kept_positions = sample_positions.new_zeros((sample_positions.shape[0], image.count))
            else:
                kept_positions = sample_positions[:, start + image.indices]
                if image.leading_cls:  # [CLS] precedes the patches in the tower's sequence: the span's first position
                    kept_positions = torch.cat([sample_positions[:, start : start + 1], kept_positions], dim=1)
            piece_positions += [sample_positions[:, cursor:start], kept_positions]
            piece_visual += [
                ids.new_zeros(start - cursor, dtype=torch.bool),
                ids.new_ones(image.embeddings.shape[0], dtype=torch.bool),
            ]
            visual += image.embeddings.shape[0]
            cursor = start + image.num_tokens
        pieces.append(embeds[cursor:])
        piece_positions.append(sample_positions[:, cursor:])
        piece_visual.append(ids.new_zeros(ids.shape[0] - cursor, dtype=torch.bool))
        sequence = torch.cat(pieces)
        sequence_positions = torch.cat(piece_positions, dim=1)
        if positions == "compact":
            sequence_positions = torch.arange(sequence.shape[0], device=sequence.device).expand_as(sequence_positions)
        rows.append((sequence, sequence_positions, visual, torch.cat(piece_visual)))
    if next(image_iter, None) is not None:
        raise ConfigError("more images were given than the prompts have placeholders for")
    inputs = _left_pad(rows, tuple(images), tuple(images_per_sample))
    return replace(inputs, deepstack=_place_deepstack(images, inputs.visual_mask))


def _place_deepstack(images: Sequence[KeptImage], visual_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Every DeepStack level as (B, L, D), each image's kept features at its kept tokens' positions, zero elsewhere.

    The visual positions, read row by row, hold the images' kept tokens in batch order (how the assembler placed
    them), which is also how the stock model scatters its features (``masked_scatter``)."""
    levels = {len(image.deepstack) for image in images}
    if not images or levels == {0} or visual_mask is None:
        return ()
    if len(levels) > 1:
        raise ConfigError(f"the images carry different numbers of DeepStack levels: {sorted(levels)}")
    placed = []
    for level in range(levels.pop()):
        features = torch.cat([image.deepstack[level] for image in images])
        dense = features.new_zeros((*visual_mask.shape, features.shape[-1]))
        dense[visual_mask] = features
        placed.append(dense)
    return tuple(placed)


def _left_pad(
    rows: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]],
    images: tuple[KeptImage, ...],
    images_per_sample: tuple[int, ...],
) -> LanguageInputs:
    length = max(sequence.shape[0] for sequence, _, _, _ in rows)
    batch = len(rows)
    first_sequence, first_positions, _, _ = rows[0]
    embeds = first_sequence.new_zeros((batch, length, first_sequence.shape[1]))
    mask = torch.zeros((batch, length), dtype=torch.long, device=first_sequence.device)
    position_ids = torch.ones((first_positions.shape[0], batch, length), dtype=torch.long, device=first_sequence.device)
    visual_mask = torch.zeros((batch, length), dtype=torch.bool, device=first_sequence.device)
    for sample, (sequence, sequence_positions, _, is_visual) in enumerate(rows):
        pad = length - sequence.shape[0]
        embeds[sample, pad:] = sequence
        mask[sample, pad:] = 1
        position_ids[:, sample, pad:] = sequence_positions
        visual_mask[sample, pad:] = is_visual
    visual = torch.tensor([count for _, _, count, _ in rows], device=first_sequence.device)
    return LanguageInputs(embeds, mask, position_ids, visual, images, images_per_sample, visual_mask)


def prompt_text(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    placeholders: Sequence[int],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's prompt text in the language model's input space, for text-guided strategies.

    Args:
        input_ids, attention_mask: the processor's (B, L) prompts.
        image_token_id: the image placeholder id.
        placeholders: every image's placeholder count, in the order images appear across the batch (how images
            are matched to samples).
        embed_tokens: the language model's input embedding.

    Returns:
        (I, T, D) embeddings of the real non-placeholder tokens of each image's sample (right-padded with zeros)
        and their (I, T) bool mask.
    """
    texts: list[torch.Tensor] = []
    image = 0
    for sample in range(input_ids.shape[0]):
        ids = input_ids[sample, attention_mask[sample].bool()]
        is_image = ids == image_token_id
        remaining = int(is_image.sum())
        embedded = embed_tokens(ids[~is_image])
        while remaining > 0:
            if image >= len(placeholders):
                raise ConfigError(f"sample {sample} has more image placeholders than the images given")
            remaining -= placeholders[image]
            texts.append(embedded)
            image += 1
    if image != len(placeholders):
        raise ConfigError(f"{len(placeholders)} images were given but the prompts hold placeholders for {image}")
    if not texts:
        raise ConfigError("text-guided pruning needs at least one image in the batch")
    length = max(1, *(text.shape[0] for text in texts))
    width = texts[0].shape[-1]
    embeddings = torch.zeros((len(texts), length, width), dtype=torch.float32, device=input_ids.device)
    mask = torch.zeros((len(texts), length), dtype=torch.bool, device=input_ids.device)
    for row, text in enumerate(texts):
        embeddings[row, : text.shape[0]] = text.float()
        mask[row, : text.shape[0]] = True
    return embeddings, mask
