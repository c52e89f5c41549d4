"""The shared image prefix: one prefill of an image's prompt prefix for every question asked about it.

Benchmarks ask several questions per image (easy-VQA about ten, MME two, POPE, GQA and VQAv2 many). When the kept
visual tokens do not depend on the question, the rows of one image in a batch begin with the same tokens (the system
text, then the image's kept tokens, sometimes the question's first words): :func:`split_shared_prefix` finds, for
each group of such rows, their longest common prefix, so that the language model runs it once per group; its KV
cache is then expanded to every row of the group and each row's own remainder (the question) is prefilled on top,
with explicit positions continuing the prefix. This is a rewrite of the same computation (as the batch size is):
the cache holds, for every row, the same keys and values at the same positions, with padding masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.errors import ConfigError
from fopru.models.inputs import LanguageInputs


def shared_prefix_switch(value: object) -> bool:
    """The run-level ``shared_prefix`` key: ``true`` (default) or ``false``, else a :class:`ConfigError`."""
    if not isinstance(value, bool):
        raise ConfigError(f"shared_prefix={value!r} must be true or false")
    return value


@dataclass(frozen=True)
class PrefixSplit:
    """A batch's prompts as one prefix per group of rows plus each row's remainder.

    Attributes:
        group_of_row: (B,) int64, the group (prefix row) of every batch row; the expansion of the prefix's cache.
        prefix: the G prefixes, left-padded to the longest (P_max), as inputs for the language model's prefill.
        suffix_embeds: (B, S_max, D) every row's remaining tokens, left-padded, so that each row's last prompt token
            is the last column (padding then sits between a row's prefix and its remainder).
        suffix_positions: (P, B, S_max) their position ids, continuing the prefix's.
        attention_mask: (B, P_max + S_max) int64 over the cache after both prefills: 1 on real tokens, 0 on padding.
    """

    group_of_row: torch.Tensor
    prefix: LanguageInputs
    suffix_embeds: torch.Tensor
    suffix_positions: torch.Tensor
    attention_mask: torch.Tensor


#: The shared prefill runs only when its token count (prefixes plus remainders, padding included) is at most this
#: fraction of the whole batch's: a second forward call costs something of its own.
MAX_COST = 0.8


def _common_length(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]) -> int:
    """How many leading tokens two rows share: embeddings and positions equal, bit for bit."""
    (embeds_a, positions_a), (embeds_b, positions_b) = first, second
    length = min(embeds_a.shape[0], embeds_b.shape[0])
    same = (embeds_a[:length] == embeds_b[:length]).all(dim=-1) & (
        positions_a[:, :length] == positions_b[:, :length]
    ).all(dim=0)
    different = (~same).nonzero()
    return int(different[0]) if different.numel() else length


def _same_start(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor], end: int) -> bool:
    return torch.equal(first[0][:end], second[0][:end]) and torch.equal(first[1][:, :end], second[1][:, :end])


def _last_visual_key(row: tuple[torch.Tensor, torch.Tensor], end: int) -> tuple[int, bytes]:
    embeds, positions = row
    token = torch.cat([embeds[end - 1].detach().float().cpu(), positions[:, end - 1].float().cpu()])
    return end, token.numpy().tobytes()


def _image_groups(rows: list[tuple[torch.Tensor, torch.Tensor]], ends: list[int]) -> list[list[int]]:
    """Rows grouped by their tokens through the last visual one (equal bit for bit); rows without visual tokens
    alone."""
    groups: list[list[int]] = []
    # The last visual token (its embedding, position and place) -> the groups whose image part ends with it: rows
    # are compared in full only with rows that share it.
    by_last: dict[tuple[int, bytes], list[int]] = {}
    for row, end in enumerate(ends):
        candidates = by_last.setdefault(_last_visual_key(rows[row], end), []) if end else []
        for number in candidates:
            if _same_start(rows[groups[number][0]], rows[row], end):
                groups[number].append(row)
                break
        else:
            if end:
                candidates.append(len(groups))
            groups.append([row])
    return groups


def split_shared_prefix(inputs: LanguageInputs, max_cost: float = MAX_COST) -> PrefixSplit | None:
    """Group the rows whose prompts agree up to and including their last visual token (the same image, pruned
    alike) and split every row into its group's longest common prefix and its remainder; ``None`` when sharing
    would not pay (no two rows share their image part, or the split prefill would run more than ``max_cost`` of
    the whole batch's tokens), or the inputs are not left-padded with a visual mask.

    A row keeps at least its last token out of the prefix, so that every row's next-token logits come from its
    own prefill."""
    if inputs.visual_mask is None or inputs.inputs_embeds.shape[0] < 2:
        return None
    mask = inputs.attention_mask.bool()
    batch, width = mask.shape
    columns = torch.arange(width, device=mask.device)
    lengths = mask.sum(dim=1)
    starts = width - lengths
    if not torch.equal(mask, columns[None] >= starts[:, None]):
        return None  # not left-padded: the real tokens are not one run per row
    last_visual = torch.where(inputs.visual_mask & mask, columns[None], -1).amax(dim=1)
    ends = torch.where(last_visual >= 0, last_visual + 1 - starts, 0).tolist()
    rows = [
        (inputs.inputs_embeds[row, start:], inputs.position_ids[:, row, start:])
        for row, start in enumerate(starts.tolist())
    ]
    groups = _image_groups(rows, ends)
    if len(groups) == batch:
        return None
    prefix_lengths = []
    for members in groups:
        leader = rows[members[0]]
        common = min(rows[member][0].shape[0] for member in members) - 1
        end = ends[members[0]]
        for member in members[1:]:  # past the image, the questions' common first words
            tail = _common_length(
                (leader[0][end:], leader[1][:, end:]), (rows[member][0][end:], rows[member][1][:, end:])
            )
            common = min(common, end + tail)
        prefix_lengths.append(common)
    if min(prefix_lengths) < 1:  # a one-token prompt has nothing to share, and an empty prefix row is all padding
        return None
    group_of_row = torch.empty(batch, dtype=torch.long)
    for number, members in enumerate(groups):
        group_of_row[members] = number
    remainders = [rows[row][0].shape[0] - prefix_lengths[int(group)] for row, group in enumerate(group_of_row)]
    if len(groups) * max(prefix_lengths) + batch * max(remainders) > max_cost * batch * width:
        return None
    leaders = [rows[members[0]] for members in groups]
    prefix = _left_padded(
        [(embeds[:n], positions[:, :n]) for (embeds, positions), n in zip(leaders, prefix_lengths, strict=True)]
    )
    skips = [prefix_lengths[int(group)] for group in group_of_row]
    suffix = _left_padded([(embeds[n:], positions[:, n:]) for (embeds, positions), n in zip(rows, skips, strict=True)])
    group_of_row = group_of_row.to(mask.device)
    attention_mask = torch.cat([prefix[1][group_of_row], suffix[1]], dim=1)
    visual = torch.zeros_like(prefix[1], dtype=torch.bool)
    prefix_inputs = LanguageInputs(prefix[0], prefix[1], prefix[2], visual.sum(dim=1), (), (0,) * len(groups), visual)
    return PrefixSplit(group_of_row, prefix_inputs, suffix[0], suffix[2], attention_mask)


def _left_padded(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows' (embeds, positions) as left-padded (embeds, int64 mask, positions)."""
    longest = max(embeds.shape[0] for embeds, _ in parts)
    first_embeds, first_positions = parts[0]
    batch = len(parts)
    padded = first_embeds.new_zeros((batch, longest, first_embeds.shape[-1]))
    mask = torch.zeros((batch, longest), dtype=torch.long, device=first_embeds.device)
    position_ids = first_positions.new_ones((first_positions.shape[0], batch, longest))
    for row, (embeds, positions) in enumerate(parts):
        start = longest - embeds.shape[0]
        padded[row, start:] = embeds
        mask[row, start:] = 1
        position_ids[:, row, start:] = positions
    return padded, mask, position_ids
