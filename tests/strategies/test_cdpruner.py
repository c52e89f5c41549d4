"""CDPruner against its official algorithm (Theia-4869/CDPruner, ``llava_arch.py``, ``encode_images``), re-expressed
step by step here, and on a case worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout
from fopru.strategies import StrategyInputs
from fopru.strategies.base import cosine_similarity
from fopru.strategies.cdpruner import CDPrunerStrategy, greedy_map


def official_cdpruner(
    image_features: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The released ``encode_images`` after the projector, step by step: (selection order, sorted indices).

    ``image_features`` (B, N, D) projected tokens, ``image_embeds`` (B, N, C) and ``text_embeds`` (M, C) the two
    sides of the relevance; ``keep`` is ``visual_token_num``.
    """
    batch, size, _ = image_features.shape
    normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    similarity = torch.matmul(normalized, normalized.transpose(1, 2))
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    relevance = torch.matmul(image_embeds, text_embeds.t())
    relevance = (-relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    cis = torch.zeros((keep, batch, size))
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    select_idx = torch.empty((keep, batch), dtype=torch.long)
    rows = torch.arange(batch)
    for i in range(keep):
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j
        eis = (kernel[rows, j] - torch.einsum("tb,tbn->bn", cis[:i, rows, j], cis[:i])) / torch.sqrt(
            di2s[rows, j]
        ).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[rows, j] = -float("inf")
    return select_idx.t(), torch.sort(select_idx.t()).values


def grid_features(size: int = 36, width: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """A 6 x 6 grid's projected tokens and a 3-token instruction, written as formulas: channel d of token i is
    cos(0.7 (d + 1) i + d), except for the top-left 2 x 2 block (tokens 0, 1, 6, 7), near duplicates of one vector
    (cos(d) + 0.01 i in channel 0), so diversity matters there. The width (20) exceeds every count kept, so the
    kernel never runs out of rank."""
    rows = []
    for index in range(size):
        row, column = divmod(index, 6)
        if row < 2 and column < 2:
            rows.append([math.cos(d) + (0.01 * index if d == 0 else 0.0) for d in range(width)])
        else:
            rows.append([math.cos(0.7 * (d + 1) * index + d) for d in range(width)])
    text = [[math.sin(1.3 * (d + 1) * (word + 1)) for d in range(width)] for word in range(3)]
    return torch.tensor(rows)[None], torch.tensor(text)


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_cdpruner_equals_the_official_algorithm_on_a_6x6_grid(keep: float) -> None:
    projected, text = grid_features()
    count = max(1, math.floor(keep * 36))
    # Relevance in the LLM's input space: the projected tokens against the prompt's embeddings (both sides of the
    # official product); one instruction embedding per text token.
    order, expected = official_cdpruner(projected, projected, text, count)
    inputs = StrategyInputs(projected=projected, text=text[None], text_mask=torch.ones(1, 3, dtype=torch.bool))
    selection = CDPrunerStrategy().select(torch.zeros(1, 36), VisualLayout(36, grids=((6, 6),)), Budget(keep), inputs)
    assert selection.indices.tolist() == expected.tolist()  # raster order, as the code sorts
    assert count <= 3 or selection.indices.tolist() != order.tolist()  # raster order, not selection order
    # Selection order itself, from the kernel the strategy builds.
    strategy = CDPrunerStrategy()
    relevance, _ = strategy.relevance(projected, text[None], torch.ones(1, 3, dtype=torch.bool))
    kernel = relevance[:, :, None] * cosine_similarity(projected)[0] * relevance[:, None, :]
    chosen, flops = greedy_map(kernel, count)
    assert chosen.tolist() == order.tolist()
    assert flops == 36 * count * (count - 1)
    assert selection.flops == 2 * 36 * 36 * 20 + 2 * 36 * 3 * 20 + 36 * count * (count - 1)
    # The 2 x 2 block of near duplicates (tokens 0, 1, 6, 7) gives at most one token at these budgets.
    assert len({0, 1, 6, 7} & set(expected[0].tolist())) <= 1


def test_cdpruner_prefers_a_diverse_token_to_a_near_duplicate() -> None:
    # Tokens (1, 0), (1, .01), (0, 1), (-1, 0); instruction (-1, -1). Relevance -cos: .707, .714, .707, -.707, so
    # normalised about .995, 1, .995, 0. Greedy MAP takes token 1 (largest r^2), then the gains r_j^2 (1 - S_1j^2)
    # are ~0 for token 0 (S ~ 1), ~.99 for token 2 (S ~ .01) and 0 for token 3: token 2, not the duplicate 0.
    projected = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0]]])
    inputs = StrategyInputs(projected=projected, text=torch.tensor([[[-1.0, -1.0]]]), text_mask=torch.ones(1, 1).bool())
    selection = CDPrunerStrategy().select(torch.zeros(1, 4), VisualLayout(4), Budget(keep=0.5), inputs)
    assert selection.indices.tolist() == [[1, 2]]
    # Without the code's sign, relevance is cos(token, instruction): -.707, -.714, -.707, .707, so token 3 (the
    # only one pointing along the instruction) comes first.
    flipped = CDPrunerStrategy(invert_relevance=False).select(
        torch.zeros(1, 4), VisualLayout(4), Budget(keep=0.25), inputs
    )
    assert flipped.indices.tolist() == [[3]]


def test_cdpruner_theta_reweights_relevance_and_equal_relevance_is_uniform() -> None:
    projected, text = grid_features()
    mask = torch.ones(1, 3, dtype=torch.bool)
    linear, _ = CDPrunerStrategy().relevance(projected, text[None], mask)
    weighted, _ = CDPrunerStrategy(theta=0.5).relevance(projected, text[None], mask)
    torch.testing.assert_close(weighted, torch.exp(0.5 / (2 * 0.5) * linear))
    same = torch.ones(1, 3, 20)
    equal, _ = CDPrunerStrategy().relevance(same, text[None], mask)
    assert equal.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ConfigError, match="theta"):
        CDPrunerStrategy(theta=1.0)
