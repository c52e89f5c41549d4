"""AdaFV (Han et al., "AdaFV: Rethinking of Visual-Language alignment for VLM acceleration", arXiv 2501.09532).

Rebuilt from the paper's abstract and secondary descriptions (the full text was not available here): a
training-free, self-adaptive mixture of visual saliency and text-to-image similarity in the pre-LLM space, with a
temperature-reweighted similarity and a geometric-mean objective. No original code was consulted; its license is
not known here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs


@dataclass(frozen=True)
class AdaFVStrategy(PruningStrategy):
    """Per image, the mix of salient and text-relevant tokens that covers most of both distributions.

    - Visual saliency p_v: [CLS]-to-patch attention (without [CLS]: the attention each token receives), clamped at
      0 and normalised to sum 1 over the span.
    - Text-to-image similarity p_t: every text token of the prompt attends over the span's projected visual tokens
      with ``softmax_i(cos(e_j, v_i) / temperature)`` (the language model's own input embeddings e_j of the text,
      the projector's outputs v_i); p_t is the mean of these rows over the text tokens.
    - Adaptive mixture: for a = 0 .. k, S_a = the a most salient tokens plus the k - a most text-similar tokens
      not already in them; the kept set is the S_a maximising the geometric mean
      ``sqrt(p_v(S_a) * p_t(S_a))`` of the mass it covers under each distribution (ties to the smaller a).
      An image whose question points at a non-salient region thus shifts budget to text-similar tokens.
    ``temperature`` (default 0.01) sharpens the cosine similarities, which lie in [-1, 1]. k =
    ``max(1, floor(keep * n))`` per span. Output: the salient tokens by descending saliency, then the text-picked
    ones by descending p_t.
    """

    needs_attention = True
    needs_projected = True
    needs_text = True

    temperature: float = 0.01

    def __post_init__(self) -> None:
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ConfigError(f"temperature={temperature!r} must be a number > 0")
        object.__setattr__(self, "temperature", float(temperature))

    def text_similarity(self, projected: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, n) p_t: text-to-image attention over the visual tokens, averaged over the real text tokens."""
        visual = torch.nn.functional.normalize(projected.float(), dim=-1)
        words = torch.nn.functional.normalize(text.float(), dim=-1)
        attention = torch.softmax(torch.matmul(words, visual.transpose(1, 2)) / self.temperature, dim=2)  # (B, T, n)
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)
        return (attention * weights[:, :, None]).sum(dim=1)

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        saliency = inputs.saliency(self.name).clamp_min(0)
        saliency = saliency / saliency.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        projected = inputs.require_projected(self.name)
        text, mask = inputs.require_text(self.name)
        similarity = self.text_similarity(projected, text, mask)
        by_saliency = torch.sort(saliency, dim=1, descending=True, stable=True).indices
        by_text = torch.sort(similarity, dim=1, descending=True, stable=True).indices
        # All k + 1 candidates at once: row a of ``picked`` marks, in text order, the tokens S_a takes by text.
        salient_rank = torch.empty_like(by_saliency).scatter_(
            1, by_saliency, torch.arange(size, device=by_saliency.device).expand(batch, -1)
        )
        splits = torch.arange(count + 1, device=by_saliency.device)  # a
        fresh = salient_rank.gather(1, by_text)[:, None, :] >= splits[None, :, None]  # (B, k + 1, n)
        picked = fresh & (fresh.cumsum(dim=2) <= (count - splits)[None, :, None])
        salient_mass = torch.cat([saliency.new_zeros(batch, 1), saliency.gather(1, by_saliency).cumsum(1)], dim=1)
        text_mass = torch.cat([saliency.new_zeros(batch, 1), similarity.gather(1, by_saliency).cumsum(1)], dim=1)
        picked_saliency = (picked * saliency.gather(1, by_text)[:, None, :]).sum(dim=2)
        picked_text = (picked * similarity.gather(1, by_text)[:, None, :]).sum(dim=2)
        objective = (salient_mass[:, : count + 1] + picked_saliency) * (text_mass[:, : count + 1] + picked_text)
        best = torch.sort(objective, dim=1, descending=True, stable=True).indices[:, 0]  # ties to the smaller a
        best_indices = torch.stack(
            [
                _mixture(by_saliency[row : row + 1], by_text[row : row + 1], int(a), count)[0]
                for row, a in enumerate(best)
            ]
        )
        flops = 2 * text.shape[1] * size * projected.shape[-1]
        return Selection(best_indices, flops=flops)


def _mixture(by_saliency: torch.Tensor, by_text: torch.Tensor, salient: int, count: int) -> torch.Tensor:
    """(B, count): the ``salient`` first tokens of ``by_saliency``, then the first of ``by_text`` not among them."""
    batch, size = by_saliency.shape
    chosen = by_saliency[:, :salient]
    taken = torch.zeros((batch, size), dtype=torch.bool, device=by_saliency.device)
    taken.scatter_(1, chosen, True)
    fresh = ~taken.gather(1, by_text)  # in text order: not yet chosen
    # stable sort puts the fresh tokens first, in text order
    order = torch.sort((~fresh).to(torch.int8), dim=1, stable=True).indices[:, : count - salient]
    return torch.cat([chosen, by_text.gather(1, order)], dim=1)
