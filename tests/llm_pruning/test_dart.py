"""DART against its official algorithm (ZichenWen1/DART, ``modeling_llama_self.py``, ``get_retained_image_token``),
re-expressed step by step here on a LLaVA-like sequence: 35 prompt tokens, a 6 x 6 image, 5 instruction tokens."""

from __future__ import annotations

import math

import pytest
import torch

from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning import DART, BoundaryInputs, Drop

START, IMAGE, TEXT = 35, 36, 5  # image_token_start_index, image_token_length, instruction tokens
LENGTH = START + IMAGE + TEXT
HEADS, HEAD_DIM, WIDTH = 2, 3, 8


def sequence(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Written-out states and keys: channel c of position p is cos(0.37 (c + 1) p + seed) (states, width 8) and
    sin(0.91 (c + 1) p + 2 seed) * (1 + (p % 7) / 3) (keys, 2 heads x 3 channels, so L1 norms differ)."""
    states = torch.tensor([[math.cos(0.37 * (c + 1) * p + seed) for c in range(WIDTH)] for p in range(LENGTH)])
    keys = torch.tensor(
        [
            [math.sin(0.91 * (c + 1) * p + 2 * seed) * (1 + (p % 7) / 3) for c in range(HEADS * HEAD_DIM)]
            for p in range(LENGTH)
        ]
    )
    return states, keys.reshape(LENGTH, HEADS, HEAD_DIM).permute(1, 0, 2)[None]  # (1, H, L, d)


def official_dart(
    last_layer_state: torch.Tensor,
    any_states: torch.Tensor,
    token_topk: int,
    pivot_image_token: int = 4,
    pivot_text_token: int = 4,
    visit: list[int] | None = None,
) -> list[int]:
    """The released ``get_retained_image_token`` step by step (batch 1, states already through the final norm);
    ``visit`` replaces the set's order of the pivots (to show that the order matters)."""
    any_states = any_states.permute(0, 2, 1, 3).reshape(any_states.shape[0], any_states.shape[2], -1)
    k_image = any_states[0][START : START + IMAGE, :]
    k_query = any_states[0][START + IMAGE :, :]
    image_norm = torch.norm(k_image, p=1, dim=-1)
    query_norm = torch.norm(k_query, p=1, dim=-1)
    image_indices = (image_norm.topk(pivot_image_token).indices + START).tolist()
    query_indices = (query_norm.topk(pivot_text_token).indices + START + IMAGE).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(START, START + IMAGE)) - set(image_indices)
    valid_indices_list = list(valid_indices)
    for item in visit if visit is not None else list(indices_set):
        valid_vectors = last_layer_state[valid_indices_list, :]
        cos_sim = -torch.nn.functional.cosine_similarity(last_layer_state[item, :], valid_vectors, dim=-1)
        top_k_indices = cos_sim.topk(token_topk).indices
        top_k_real_indices = [valid_indices_list[i] for i in top_k_indices]
        indices_set.update(top_k_real_indices)
        valid_indices.difference_update(top_k_real_indices)
        valid_indices_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


def boundary(states: torch.Tensor, keys: torch.Tensor, kept: int, padding: int = 0) -> BoundaryInputs:
    """The inputs at DART's boundary for one sample, left-padded by ``padding`` positions."""
    visual = torch.zeros(LENGTH, dtype=torch.bool)
    visual[START : START + IMAGE] = True
    real = torch.ones(LENGTH, dtype=torch.bool)

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(tensor.shape)
        shape[dim] = padding
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    return BoundaryInputs(
        hidden=pad(states, 0)[None],
        query=pad(keys, 2),  # unused by DART
        key=pad(keys, 2),
        scaling=1.0,
        visual=pad(visual, 0)[None],
        real=pad(real, 0)[None],
        guide=None,
        kept=torch.tensor([kept]),
        number=0,
        norm=lambda hidden: hidden,  # the states are given after the final norm
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [8, 16, 24])
def test_dart_equals_the_official_algorithm(seed: int, budget: int) -> None:
    states, keys = sequence(seed)
    method = DART()
    [drop] = method.schedule(IMAGE, 32, Budget(keep_tokens=budget))
    per_pivot = budget // 8  # the code: ceil(max_num_trunction // (4 + 4))
    assert drop == Drop(2, 4 + 8 * per_pivot)
    expected = official_dart(states, keys, per_pivot)
    assert len(expected) == drop.kept
    for padding in (0, 3):  # left padding shifts the sequence, not the prompt positions the code's set holds
        keep = method.select(boundary(states, keys, drop.kept, padding))[0]
        survivors = (keep[padding:] & boundary(states, keys, drop.kept).visual[0]).nonzero().flatten().tolist()
        assert survivors == expected
        assert bool(keep[padding:][~boundary(states, keys, drop.kept).visual[0]].all())  # text all stays


def test_the_pivots_order_matters_and_follows_the_codes_set() -> None:
    """On some of these sequences, visiting the pivots in another order (ascending positions) keeps other
    tokens: the official set order is what DART reproduces."""
    differs = 0
    for seed in range(6):
        states, keys = sequence(seed)
        flat = keys.permute(0, 2, 1, 3).reshape(LENGTH, -1).abs().sum(dim=-1)
        pivots = (flat[START : START + IMAGE].topk(4).indices + START).tolist()
        pivots += (flat[START + IMAGE :].topk(4).indices + START + IMAGE).tolist()
        assert list(set(pivots)) != sorted(pivots) or seed > 0  # positions past the table size: not sorted
        ascending = official_dart(states, keys, 2, visit=sorted(pivots))
        differs += ascending != official_dart(states, keys, 2)
    assert differs > 0


def test_dart_counts_and_config_errors() -> None:
    # 576 tokens, keep 0.1: k = 57, 57 // 8 = 7 per pivot, 4 + 8 * 7 = 60 survive; keep_tokens 128 keeps 132.
    assert DART().schedule(576, 32, Budget(keep=0.1)) == (Drop(2, 60),)
    assert DART().schedule(576, 32, Budget(keep_tokens=128)) == (Drop(2, 132),)
    # Few tokens: the pivots alone (k // 8 = 0), never more than n.
    assert DART().schedule(16, 4, Budget(keep=0.25)) == (Drop(2, 4),)
    assert DART().schedule(3, 4, Budget(keep=0.25)) == (Drop(2, 3),)
    assert DART(layer=0.5).schedule(20, 8, Budget(keep=0.5)) == (Drop(4, 4 + 8 * 1),)
    with pytest.raises(ConfigError, match="image_pivots"):
        DART(image_pivots=0)
    with pytest.raises(ConfigError, match="text_pivots"):
        DART(text_pivots=-1)
