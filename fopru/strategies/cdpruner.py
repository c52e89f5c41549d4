"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", NeurIPS 2025, arXiv 2506.10967).

Follows the authors' code, Theia-4869/CDPruner (Apache-2.0), ``llava/model/llava_arch.py`` (``encode_images``:
conditional similarity, kernel, fast greedy MAP inference) and ``llava/model/multimodal_encoder/clip_encoder.py``
(where the image and text embeddings come from); re-expressed here, no code copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity


@dataclass(frozen=True)
class CDPrunerStrategy(PruningStrategy):
    """Instruction-conditioned determinantal point process over the projected tokens: the k tokens whose kernel
    submatrix has the largest determinant, found by fast greedy MAP inference.

    Per image (per span), with v_i the projected visual tokens and e_j the prompt's text embeddings:

    - similarity ``S_ij = cos(v_i, v_j)`` (the official code: the projector's outputs, as here);
    - relevance ``r_i = mean_j -cos(v_i, e_j)``, min-max normalised over the span to ``(r - min + 1e-6) /
      (max - min)`` (every ``r_i`` = 1 where all are equal). The sign follows the released code
      (``(-relevance).mean``), which ``invert_relevance: false`` turns off. Averaging the cosines over the text
      tokens equals, after this normalisation, the cosine with their mean direction (one instruction vector, like
      the code's pooled text embedding). With ``theta`` set, ``r`` becomes ``exp(theta / (2 (1 - theta)) r)``,
      the code's commented option; null (the code's default) leaves it linear;
    - kernel ``L = diag(r) S diag(r)``;
    - greedy MAP (Chen et al. 2018's Cholesky update): ``d_i^2 = L_ii``; k times, take ``j = argmax d^2`` (ties to
      the lower index), ``e = (L_j - c_j^T C) / sqrt(d_j^2)``, append ``e`` to ``C``, ``d^2 -= e^2``, retire j.

    The kept tokens come out in raster order (the code sorts the selected indices). k = ``max(1, floor(keep *
    n))`` per span (the code: ``visual_token_num`` per image, per crop on LLaVA-NeXT).

    Where this differs from the code: the code measures relevance in CLIP's joint space (the vision tower's
    ``post_layernorm`` + ``visual_projection`` of the selected layer against the CLIP text tower's embedding of the
    instruction); no family here ships a text tower aligned with its vision encoder (Qwen2-VL has none), so
    relevance is measured in the language model's input space, between the projected tokens and the prompt's own
    input embeddings (``needs_text``). On LLaVA-NeXT the code normalises relevance over all crops of an image at
    once; here it is per crop (span).
    """

    needs_projected = True
    needs_text = True

    theta: float | None = None
    invert_relevance: bool = True

    def __post_init__(self) -> None:
        theta = self.theta
        if theta is not None and (isinstance(theta, bool) or not isinstance(theta, int | float) or not 0 < theta < 1):
            raise ConfigError(f"theta must be null (linear relevance) or a number in (0, 1), got theta={theta!r}")
        if not isinstance(self.invert_relevance, bool):
            raise ConfigError(f"invert_relevance must be true or false, got {self.invert_relevance!r}")
        object.__setattr__(self, "theta", None if theta is None else float(theta))

    def relevance(self, projected: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, n) float32 normalised relevance of each token to the instruction, and its product's FLOPs."""
        visual = torch.nn.functional.normalize(projected.float(), dim=-1)
        words = torch.nn.functional.normalize(text.float(), dim=-1)
        cosines = torch.matmul(visual, words.transpose(1, 2))  # (B, n, T)
        if self.invert_relevance:
            cosines = -cosines
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)
        relevance = (cosines * weights[:, None, :]).sum(dim=2)  # mean over the real text tokens
        low = relevance.amin(dim=1, keepdim=True)
        high = relevance.amax(dim=1, keepdim=True)
        spread = high - low
        # The code divides by the spread; an image whose tokens are all equally relevant has none (then every token
        # weighs 1, the limit of equal relevances).
        relevance = torch.where(spread > 0, (relevance - low + 1e-6) / spread.clamp_min(1e-30), 1.0)
        if self.theta is not None:
            relevance = torch.exp(self.theta / (2 * (1 - self.theta)) * relevance)
        return relevance, 2 * visual.shape[1] * words.shape[1] * visual.shape[2]

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        count = budget.count(significance.shape[1], num_tokens)
        projected = inputs.require_projected(self.name)
        text, mask = inputs.require_text(self.name)
        similarity, similarity_flops = cosine_similarity(projected)
        relevance, relevance_flops = self.relevance(projected, text, mask)
        kernel = relevance[:, :, None] * similarity * relevance[:, None, :]
        chosen, map_flops = greedy_map(kernel, count)
        return Selection(chosen.sort(dim=1).values, flops=similarity_flops + relevance_flops + map_flops)


def greedy_map(kernel: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Fast greedy MAP inference of a DPP with (B, n, n) kernel: (B, count) indices in selection order and the
    FLOPs of its products per sample (step i multiplies 1 x i by i x n: ``n count (count - 1)`` in all).

    Once the kernel's rank is spent (more picks than its rank, e.g. tokens narrower than the count), the remaining
    gains are zero up to rounding: a pick then leaves the gains as they are (the code would divide by ~0) and never
    repeats a token.
    """
    batch, size, _ = kernel.shape
    rows = torch.arange(batch, device=kernel.device)
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # d_i^2
    available = torch.ones((batch, size), dtype=torch.bool, device=kernel.device)
    factors = kernel.new_zeros((batch, count, size))  # C, one row per step
    chosen = []
    for step in range(count):
        candidates = gains.nan_to_num(nan=-torch.inf).masked_fill(~available, -torch.inf)
        pick = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, 0]
        chosen.append(pick)
        available[rows, pick] = False
        past = factors[rows, :step, pick][:, None, :]  # (B, 1, step): c_j
        gain = gains[rows, pick]
        update = (kernel[rows, pick] - torch.matmul(past, factors[:, :step])[:, 0]) / gain.clamp_min(1e-30).sqrt()[
            :, None
        ]
        update = torch.where((gain > 1e-12)[:, None], update, 0.0)
        factors[:, step] = update
        gains = gains - update.square()
    return torch.stack(chosen, dim=1), size * count * (count - 1)
