"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025).

Follows the authors' released code, github.com/dvlab-research/VisionZip (Apache-2.0): ``visionzip/clip_encoder.py``
(``CLIPVisionTower_VisionZip.forward``: dominant and contextual tokens) and ``visionzip/utils.py``
(``CLIPAttention_forward``: the keys averaged over heads that similarity is measured on). Re-expressed here, no code
copied.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import KEY_HEADS, KeyHeads, PruningStrategy, Selection, StrategyInputs, top_indices

ContextualMerge = Literal["sum", "mean"]
CONTEXTUAL_MERGES: tuple[str, ...] = ("sum", "mean")


class VisionZipStrategy(PruningStrategy):
    """Dominant tokens by [CLS] attention plus contextual tokens merged by key similarity.

    Of a span's budget k = ``max(1, floor(keep * n))``, ``d = max(1, round(dominant * k))`` tokens are *dominant*:
    the highest [CLS]-to-patch attention of the tapped layer (the released code sums heads; the tap averages them,
    which ranks identically; ties to the lower index). The other ``c = k - d`` are *contextual*: the remaining
    n - d tokens, in raster order, are split into c targets taken with a uniform stride (every
    ``max(1, (n - d) // c)``-th, the first c of them) and the rest, each of which joins the target whose key is most
    similar (cosine; ties to the earlier target). A contextual token sits at its target's position and is, by
    default (``contextual_merge=sum``, the released code), its target *plus* the mean of the tokens that joined it
    (the target alone if none did); ``contextual_merge=mean`` is the paper's reading, the plain mean of the target and
    the tokens that joined it.

    - Similarity uses the tapped layer's keys averaged over heads (``keys=mean``, the released code);
      ``keys=concatenated`` measures it on the heads' keys side by side. Where keys are not available on the N
      tokens (Qwen2-VL's merged tokens) the features are used instead.
    - Without [CLS] (Qwen2-VL) dominance is the attention each token receives (``AttentionSummary.received``).
    - ``dominant`` defaults to 54 / 64 = 0.84375, the released split (54 + 10 = 64, 108 + 20, 162 + 30).
    - [CLS]: the released code keeps the [CLS] token itself as one of the d dominant tokens (``dominant=54`` there
      means [CLS] + 53 patches; ``keep_cls=true``, the default). Where the family hands the [CLS] features over
      (single-grid CLIP towers: LLaVA-1.5, the embedded model) the selection names d - 1 dominant patches and
      [CLS] goes first (:attr:`PruningStrategy.keeps_cls`); elsewhere (no [CLS], or LLaVA-NeXT's packed grids) all
      d dominant tokens are patches, as with ``keep_cls=false``.
    - Output order, as the released code emits it: [CLS], the dominant patches in raster order, then the contextual
      ones in the raster order of their targets (``method=visionzip`` keeps this order: ``reorder=none``; other
      reorder policies order the patches and contextual tokens, [CLS] stays first).
    - LLaVA-NeXT: every grid of the layout (base image, unpadded tile grid) gets its own dominant/contextual split.
    """

    merges = True
    needs_attention = True

    def __init__(
        self,
        dominant: float = 0.84375,
        contextual_merge: ContextualMerge = "sum",
        keys: KeyHeads = "mean",
        keep_cls: bool = True,
    ) -> None:
        if isinstance(dominant, bool) or not isinstance(dominant, int | float) or not 0 < dominant <= 1:
            raise ConfigError(f"dominant={dominant!r} must be the dominant share of the budget, in (0, 1]")
        if contextual_merge not in CONTEXTUAL_MERGES:
            raise ConfigError(f"contextual_merge={contextual_merge!r} is not one of {list(CONTEXTUAL_MERGES)}")
        if keys not in KEY_HEADS:
            raise ConfigError(f"keys={keys!r} is not one of {list(KEY_HEADS)}")
        self.dominant = float(dominant)
        self.contextual_merge = contextual_merge
        self.averages = contextual_merge == "mean"
        self.keys = keys
        if not isinstance(keep_cls, bool):
            raise ConfigError(f"keep_cls={keep_cls!r} must be true or false")
        self.keeps_cls = keep_cls

    def split(self, count: int) -> tuple[int, int]:
        """(dominant, contextual) token counts of a budget of ``count`` tokens."""
        dominant = min(count, max(1, math.floor(self.dominant * count + 0.5)))
        return dominant, count - dominant

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        dominant_count, contextual = self.split(budget.count(size, num_tokens))
        if self.keeps_cls and inputs.has_cls:  # [CLS] is one of the dominant tokens; it goes first (the pipeline)
            dominant_count -= 1
        saliency = inputs.saliency(self.name)
        dominant = torch.sort(top_indices(saliency, dominant_count), dim=1).values  # (B, d), raster order
        rows = torch.nn.functional.one_hot(dominant, size).float()
        if contextual == 0:
            return Selection(dominant, rows)
        is_rest = torch.ones((batch, size), dtype=torch.bool, device=significance.device)
        is_rest[torch.arange(batch, device=dominant.device)[:, None], dominant] = False
        rest = torch.arange(size, device=dominant.device).expand(batch, -1)[is_rest].view(batch, size - dominant_count)
        step = max(1, rest.shape[1] // contextual)
        target_slots = torch.arange(contextual, device=rest.device) * step
        is_target = torch.zeros(rest.shape[1], dtype=torch.bool, device=rest.device)
        is_target[target_slots] = True
        targets = rest[:, is_target]  # (B, c), raster order
        others = rest[:, ~is_target]  # (B, m)
        keys = torch.nn.functional.normalize(inputs.similarity_basis(self.name, self.keys).float(), dim=-1)
        width = keys.shape[-1]
        target_keys = keys.gather(1, targets[:, :, None].expand(-1, -1, width))
        other_keys = keys.gather(1, others[:, :, None].expand(-1, -1, width))
        similarity = torch.matmul(other_keys, target_keys.transpose(1, 2))  # (B, m, c)
        assignment = similarity.argmax(dim=2)  # first maximum: ties to the earlier target
        joined = torch.nn.functional.one_hot(assignment, contextual).float().transpose(1, 2)  # (B, c, m)
        members = torch.zeros((batch, contextual, size), device=significance.device)
        members.scatter_add_(2, others[:, None, :].expand(-1, contextual, -1), joined)  # who joined each target
        itself = torch.nn.functional.one_hot(targets, size).float()
        if self.contextual_merge == "sum":
            merged = itself + members / members.sum(dim=2, keepdim=True).clamp_min(1)
        else:
            merged = itself + members
            merged = merged / merged.sum(dim=2, keepdim=True)
        flops = 2 * others.shape[1] * contextual * width
        return Selection(torch.cat([dominant, targets], dim=1), torch.cat([rows, merged], dim=1), flops=flops)
