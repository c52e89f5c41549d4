import pytest
import torch

from fopru.components import choices, load
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.significance import (
    AttentionSummary,
    FocalSignificance,
    SignificanceSource,
    summarize_attention,
)

LAYOUT = VisualLayout.from_grid((3, 4))


def summary(batch: int = 2, seed: int = 0, has_cls: bool = True) -> AttentionSummary:
    generator = torch.Generator().manual_seed(seed)
    positions = LAYOUT.num_tokens + int(has_cls)
    logits = torch.randn(batch, 3, positions, positions, generator=generator)
    return summarize_attention(logits.softmax(-1), has_cls=has_cls)


def features(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, LAYOUT.num_tokens, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", choices("significance"))
def test_every_registered_source_meets_the_contract(name: str) -> None:
    source = load("significance", name, SignificanceSource)
    attention = summary() if source.reduction is not None else None
    scores = source.score(attention, features(), LAYOUT)
    assert scores.shape == (2, LAYOUT.num_tokens)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_focal_applies_the_variance_rule_per_image() -> None:
    received = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    paid = torch.tensor([[0.2, 0.3, 0.2], [0.0, 1.0, 0.0]])
    attention = AttentionSummary(received=received, paid=paid, cls=None)
    layout = VisualLayout.from_grid((1, 3))
    scores = FocalSignificance().score(attention, torch.zeros(2, 3, 1), layout)
    assert scores.tolist() == [received[0].tolist(), paid[1].tolist()]
    assert FocalSignificance(direction="paid").score(attention, torch.zeros(2, 3, 1), layout).equal(paid)


def test_focal_picks_received_without_cls() -> None:
    attention = summary(has_cls=False)
    scores = FocalSignificance().score(attention, features(), LAYOUT)
    assert torch.equal(scores, attention.received)


def test_cls_source_needs_a_cls_token() -> None:
    source = load("significance", "cls", SignificanceSource)
    assert torch.equal(source.score(summary(), features(), LAYOUT), summary().cls)
    with pytest.raises(ConfigError, match="needs a vision encoder with a \\[CLS\\] token"):
        source.score(summary(has_cls=False), features(), LAYOUT)


def test_norm_is_the_feature_l2_norm() -> None:
    values = features()
    scores = load("significance", "norm", SignificanceSource).score(None, values, LAYOUT)
    torch.testing.assert_close(scores, values.pow(2).sum(-1).sqrt())


def test_random_is_reproducible_from_its_seed() -> None:
    first = load("significance", "random", SignificanceSource).score(None, features(), LAYOUT)
    second = load("significance", "random", SignificanceSource).score(None, features(), LAYOUT)
    assert torch.equal(first, second)
    assert not torch.equal(first[0], first[1])


def test_attention_sources_refuse_to_run_without_attention() -> None:
    with pytest.raises(ValueError, match="reads attention"):
        FocalSignificance().score(None, features(), LAYOUT)


def test_unknown_direction_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"auto.*received.*paid"):
        FocalSignificance(direction="up")  # type: ignore[arg-type]
