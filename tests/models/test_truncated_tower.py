"""The vision tower runs only up to the layer the model reads: logits unchanged, the later layers never called."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR
from fopru.models.base import TargetModel
from tests.models.conftest import TINY_MODELS, example_batch, make_pipeline


@pytest.fixture(scope="module", params=TINY_MODELS)
def family(request: pytest.FixtureRequest) -> tuple[str, TargetModel]:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{request.param}.yaml"))
    assert isinstance(built, TargetModel)
    return request.param, built.load()


class LayerCalls:
    """Counts the forward calls of every vision layer."""

    def __init__(self, adapter: TargetModel) -> None:
        self.calls = [0] * len(adapter.vision_layers())
        self.handles = [
            layer.register_forward_hook(self._counter(index)) for index, layer in enumerate(adapter.vision_layers())
        ]

    def _counter(self, index: int):  # type: ignore[no-untyped-def]
        def hook(*_: object) -> None:
            self.calls[index] += 1

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("significance", ["focal", "norm"])
def test_the_tower_stops_at_the_layer_it_reads_and_the_logits_do_not_change(
    family: tuple[str, TargetModel], significance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, adapter = family
    batch = example_batch(name, adapter, [0, 1])
    pipeline = make_pipeline("rank", keep=0.5, significance=significance, positions="auto")
    depth = len(adapter.vision_layers())
    counter = LayerCalls(adapter)
    truncated = adapter.generate(batch, pipeline, max_new_tokens=3)
    calls = counter.calls
    counter.remove()
    last = adapter.feature_layer()
    if last is None or last == depth - 1:  # the family reads the last layer (a merger on top, SigLIP's -1): all run
        assert all(count > 0 for count in calls)
        return
    needed = last + 1
    if pipeline.request.reduction is not None:
        needed = max(needed, adapter.tap_index(pipeline.request) + 1)
    assert needed < depth, f"{name}: the fixture's feature layer should leave a layer to skip"
    assert all(count > 0 for count in calls[:needed]) and calls[needed:] == [0] * (depth - needed)
    # The same request on the whole tower (truncation off): the same features, logits and tokens.
    monkeypatch.setattr(adapter, "vision_layers_to_run", lambda request: None)
    counter = LayerCalls(adapter)
    full = adapter.generate(batch, pipeline, max_new_tokens=3)
    counter.remove()
    assert all(count > 0 for count in counter.calls), "the reference run uses every layer"
    assert torch.equal(truncated.inputs.inputs_embeds, full.inputs.inputs_embeds)
    assert torch.equal(adapter.prefill_logits(truncated.inputs), adapter.prefill_logits(full.inputs))
    assert torch.equal(truncated.tokens, full.tokens)
    assert len(adapter.vision_layers()) == depth, "the tower is whole again after the request"


def test_a_tap_past_the_feature_layer_runs_the_tower_through_it() -> None:
    adapter = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava.yaml")).load()
    pipeline = make_pipeline("rank", keep=0.5)
    # The last layer, which the projector does not read.
    pipeline = replace(pipeline, significance=replace(pipeline.significance, layer=-1))
    depth = len(adapter.vision_layers())
    assert adapter.vision_layers_to_run(pipeline.request) == depth
    counter = LayerCalls(adapter)
    adapter.generate(example_batch("tiny_llava", adapter, [0]), pipeline, max_new_tokens=2)
    counter.remove()
    assert counter.calls[-1] == 1


def test_a_stock_forward_after_a_truncated_one_still_records_every_hidden_state() -> None:
    """transformers hooks hidden-state recording onto the layers of a model's first forward: a first forward on a
    truncated tower would leave the last layers unhooked and break the stock model's image features."""
    adapter = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava.yaml")).load()
    batch = example_batch("tiny_llava", adapter, [0, 1])
    adapter.generate(batch, make_pipeline("rank", keep=0.5), max_new_tokens=1)  # the model's first forward
    tower = adapter.model.model.vision_tower
    with torch.no_grad():
        hidden = tower(batch["pixel_values"], output_hidden_states=True).hidden_states
        stock = adapter.model(**{k: v for k, v in batch.items() if k != "sample_keys"}).logits
    assert len(hidden) == len(adapter.vision_layers()) + 1
    assert torch.isfinite(stock).all()
