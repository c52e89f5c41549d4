"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv 2502.11494).

Follows the authors' code, ZichenWen1/DART (Apache-2.0; read from its public mirror xqy1111111/DART),
``llava/model/language_model/modeling_llama_self.py`` (``DART.forward`` at layer K, ``get_retained_image_token``;
the Qwen2-VL port ``Qwen2-VL/Qwen2VL_DART/modeling_qwen2_vl_self.py`` does the same) and the defaults of
``llava/eval/model_vqa_loader.py`` (K = 2, 4 image and 4 text pivots); re-expressed here, no code copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning.base import (
    BoundaryInputs,
    Drop,
    LayerSpec,
    LLMPruning,
    check_keep,
    check_layer_spec,
    final_count,
    resolve_layer,
    trailing_text,
)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {name}={value!r}")
    return value


@dataclass(frozen=True)
class DART(LLMPruning):
    """Duplication-aware token reduction: after layer K, keep a few pivot tokens and, for each pivot, the visual
    tokens least similar to it.

    At the boundary (layer K, 0-based, is the first without the dropped tokens), from layer K - 1:

    1. pivots: the ``image_pivots`` visual tokens and the ``text_pivots`` instruction tokens (the real tokens after
       the image) with the largest L1 norm of their keys (rotated, heads concatenated);
    2. states: layer K - 1's output through the language model's final norm;
    3. ``per_pivot = k // (image_pivots + text_pivots)`` with k the budget's count;
    4. the candidates are the visual tokens that are not image pivots; pivots are visited in the order in which
       the code's Python ``set`` of their prompt positions yields them, and each takes the ``per_pivot``
       candidates of lowest cosine similarity to its state, which leave the candidates;
    5. survivors: the image pivots and every taken token (the text pivots stay as text), in prompt order; positions
       keep their original values (the code sets ``position_ids`` to the kept indices).

    The survivor count is ``image_pivots + (image_pivots + text_pivots) * per_pivot`` (capped at n), which can
    exceed k by up to ``image_pivots``: the code's count (``max_num_trunction = 128`` keeps 132). Counts assume
    the instruction has at least ``text_pivots`` tokens after the image (every benchmark prompt does); with fewer,
    fewer pivots take tokens. Cosine similarities are one product of the pivots' states with every visual state
    (``2 P n D`` FLOPs), the same values the code forms pivot by pivot.

    Args:
        layer: K (the code: 2), or a fraction of the depth.
        image_pivots, text_pivots: pivot counts (the code: 4 and 4).
        keep: the method's own budget (a fraction), or null for the run's (the code's ``max_num_trunction`` is
            ``keep_tokens``).
    """

    selects = True

    layer: LayerSpec = 2
    image_pivots: int = 4
    text_pivots: int = 4
    keep: float | None = None

    def __post_init__(self) -> None:
        check_layer_spec("llm_pruning.layer", self.layer)
        _check_count("llm_pruning.image_pivots", self.image_pivots, 1)
        _check_count("llm_pruning.text_pivots", self.text_pivots, 0)
        object.__setattr__(self, "keep", check_keep("llm_pruning.keep", self.keep))

    def per_pivot(self, visual: int, budget: Budget) -> int:
        """Tokens each pivot takes: the budget's count split evenly over the pivots (rounded down)."""
        return final_count(visual, budget, self.keep) // (self.image_pivots + self.text_pivots)

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        layer = resolve_layer("llm_pruning.layer", self.layer, depth)
        image = min(self.image_pivots, visual)
        taken = min(visual - image, (image + self.text_pivots) * self.per_pivot(visual, budget))
        return (Drop(layer, image + taken),)

    def select(self, inputs: BoundaryInputs) -> torch.Tensor:
        keep = ~inputs.visual
        instruction = trailing_text(inputs.visual, inputs.real)
        norms = inputs.key.float().abs().sum(dim=-1).sum(dim=1)  # (B, L): L1 over heads and channels
        states = torch.nn.functional.normalize(inputs.norm(inputs.hidden).float(), dim=-1)
        for sample in range(keep.shape[0]):
            visual = inputs.visual[sample].nonzero().flatten()
            kept = int(inputs.kept[sample])
            if not 0 < kept < visual.numel():
                continue
            image = min(self.image_pivots, visual.numel())
            per_pivot = (kept - image) // (image + self.text_pivots)
            first = int(inputs.real[sample].to(torch.int8).argmax())  # left padding before the prompt
            text = instruction[sample].nonzero().flatten()
            keep[sample, self.choose(norms[sample], states[sample], visual, text, per_pivot, first)] = True
        return keep

    def choose(
        self,
        norms: torch.Tensor,
        states: torch.Tensor,
        visual: torch.Tensor,
        text: torch.Tensor,
        per_pivot: int,
        first: int = 0,
    ) -> torch.Tensor:
        """One sample's surviving visual positions, ascending.

        Args:
            norms: (L,) the keys' L1 norms over the sequence.
            states: (L, D) the normalised states, unit length.
            visual, text: the visual and instruction positions, ascending.
            per_pivot: tokens each pivot takes.
            first: the sequence position of the prompt's first token (the code's positions start there).
        """
        image = visual[_top(norms[visual], min(self.image_pivots, visual.numel()))]
        words = text[_top(norms[text], min(self.text_pivots, text.numel()))]
        pivots = torch.cat([image, words])
        similarity = torch.matmul(states[pivots], states[visual].T)  # (P, n)
        # The code visits set(image pivots + text pivots) of prompt positions, built in that order (largest norm
        # first): the same list into a Python set gives the same, fixed, order (CPython's set of ints).
        positions = [position - first for position in pivots.tolist()]
        row_of = {position: row for row, position in enumerate(positions)}
        available = torch.ones(visual.numel(), dtype=torch.bool, device=visual.device)
        available[torch.searchsorted(visual, image)] = False
        taken = [image]
        for position in list(set(positions)):
            take = min(per_pivot, int(available.sum()))
            scores = similarity[row_of[position]].masked_fill(~available, torch.inf)
            picked = torch.sort(scores, stable=True).indices[:take]
            available[picked] = False
            taken.append(visual[picked])
        return torch.cat(taken).sort().values

    def boundary_flops(self, text_config: PretrainedConfig, number: int, keys: int, visual: int, trailing: int) -> int:
        pivots = min(self.image_pivots, visual) + min(self.text_pivots, trailing)
        return 2 * pivots * visual * int(text_config.get_text_config().hidden_size)


def _top(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest values, largest first, ties toward the lower index."""
    return torch.sort(values, descending=True, stable=True).indices[:count]
