"""The vision cache: each distinct image encoded once, reused within a batch, across requests and processes,
with predictions bitwise identical to the uncached path, keys that change with what the encoding depends on, and
eviction at the size cap."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from fopru.components import CONFIG_DIR, choices, load
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.models.inputs import Generation
from fopru.models.vision_cache import VisionCache
from fopru.pipeline import PruningPipeline
from fopru.significance.base import SignificanceSource
from tests.models.conftest import TINY_MODELS, example_batch, make_image, make_pipeline

REPO = Path(__file__).resolve().parents[2]


def declared(name: str) -> TargetModel:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))
    assert isinstance(built, TargetModel)
    return built


#: The tiny families whose adapters declare that the cache can hold their images (``caches_vision``).
CACHED_MODELS = [name for name in TINY_MODELS if declared(name).caches_vision]
UNCACHED_MODELS = [name for name in TINY_MODELS if not declared(name).caches_vision]


@pytest.fixture(scope="module", params=CACHED_MODELS)
def family(request: pytest.FixtureRequest) -> Iterator[tuple[str, TargetModel]]:
    built = declared(request.param)
    built.load()
    yield request.param, built
    built.vision_cache = None


@pytest.mark.parametrize("name", UNCACHED_MODELS)
def test_a_family_the_cache_cannot_hold_encodes_every_batch_itself(name: str, tmp_path: Path) -> None:
    adapter = declared(name).load()
    batch = example_batch(name, adapter, [0, 1])
    pipeline = make_pipeline("rank", keep=0.5, positions="auto")
    uncached = adapter.generate(batch, pipeline, max_new_tokens=3)
    adapter.vision_cache = cache = VisionCache(folder=str(tmp_path))
    same_generation(uncached, adapter.generate(batch, pipeline, max_new_tokens=3))
    assert cache.stats.misses == cache.stats.hits == 0 and not any(tmp_path.iterdir())


def duplicated_batch(name: str, adapter: TargetModel) -> Mapping[str, torch.Tensor]:
    """Three samples, the first and the last on the same image with different questions."""
    images = [make_image(0, *_size(name, 0)), make_image(1, *_size(name, 1)), make_image(0, *_size(name, 0))]
    prompts = batch_prompts(name)
    # Sample keys: random strategies draw per sample from them, so two calls draw the same.
    return adapter.prepare(images, [prompts[0], prompts[1], prompts[1]], sample_keys=[11, 12, 13])


def _size(name: str, seed: int) -> tuple[int, int]:
    from tests.models.conftest import fixture_module

    width, height = fixture_module(name).EXAMPLE_SIZES[seed]
    return width, height


def batch_prompts(name: str) -> tuple[str, ...]:
    from tests.models.conftest import fixture_module

    return tuple(fixture_module(name).EXAMPLE_PROMPTS)


class EncodedImages:
    """Counts the images each :meth:`TargetModel.visual_groups` call encodes, and the first vision layer's calls."""

    def __init__(self, adapter: TargetModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images: list[int] = []
        self.layer_calls = 0
        original = adapter.visual_groups

        def counted(batch: Mapping[str, torch.Tensor], request: object) -> object:
            self.images.append(adapter.image_count(batch))
            return original(batch, request)  # type: ignore[arg-type]

        monkeypatch.setattr(adapter, "visual_groups", counted)
        self.handle = adapter.vision_layers()[0].register_forward_hook(self._layer)

    def _layer(self, *_: object) -> None:
        self.layer_calls += 1


def same_generation(first: Generation, second: Generation) -> None:
    assert first.texts == second.texts
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.inputs.inputs_embeds, second.inputs.inputs_embeds)
    assert torch.equal(first.inputs.position_ids, second.inputs.position_ids)
    assert torch.equal(first.inputs.attention_mask, second.inputs.attention_mask)


def test_cached_predictions_are_bitwise_the_uncached_ones_and_duplicates_are_encoded_once(
    family: tuple[str, TargetModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, adapter = family
    batch = duplicated_batch(name, adapter)
    pipeline = make_pipeline("rank", keep=0.5, positions="auto")
    adapter.vision_cache = None
    today = adapter.generate(batch, pipeline, max_new_tokens=4)  # the uncached path, as before the cache existed
    adapter.vision_cache = cache = VisionCache(folder=str(tmp_path))
    counter = EncodedImages(adapter, monkeypatch)
    cold = adapter.generate(batch, pipeline, max_new_tokens=4)
    assert counter.images == [2], "the duplicate image of the batch is encoded once"
    calls_cold = counter.layer_calls
    warm = adapter.generate(batch, pipeline, max_new_tokens=4)
    assert counter.images == [2] and counter.layer_calls == calls_cold, "a warm cache runs no vision layer"
    assert cache.stats.misses == 2 and cache.stats.hits == 2
    same_generation(today, cold)
    same_generation(today, warm)
    counter.handle.remove()


@pytest.mark.parametrize("strategy", choices("strategy"))
def test_every_strategy_predicts_the_same_with_a_warm_cache(strategy: str, tmp_path: Path) -> None:
    adapter = load("model", "tiny_llava", TargetModel).load()
    batch = duplicated_batch("tiny_llava", adapter)
    pipeline = make_pipeline(strategy, keep=0.5)
    uncached = adapter.generate(batch, pipeline, max_new_tokens=3)
    adapter.vision_cache = VisionCache(folder=str(tmp_path))
    adapter.generate(batch, pipeline, max_new_tokens=3)
    same_generation(uncached, adapter.generate(batch, pipeline, max_new_tokens=3))
    assert adapter.vision_cache.stats.hits == 2


def test_an_entry_without_cls_features_is_not_reused_where_they_are_asked_for(tmp_path: Path) -> None:
    # The [CLS] features VisionZip asks for (PruningRequest.cls) are part of what an entry holds: a cache filled
    # by a request without them must miss, not hand VisionZip patch-only groups.
    adapter = load("model", "tiny_llava", TargetModel).load()
    batch = duplicated_batch("tiny_llava", adapter)
    visionzip = make_pipeline("visionzip", keep=0.5, significance="cls")
    uncached = adapter.generate(batch, visionzip, max_new_tokens=3)
    adapter.vision_cache = VisionCache(folder=str(tmp_path))
    adapter.generate(batch, make_pipeline("visionzip", keep=0.5, significance="cls"), max_new_tokens=1)
    fopru_rank = make_pipeline("rank", keep=0.5, significance="cls")  # the same tap, no [CLS] features
    adapter.generate(batch, fopru_rank, max_new_tokens=1)
    assert adapter.vision_cache.stats.misses == 4  # two distinct images, once per request shape
    same_generation(uncached, adapter.generate(batch, visionzip, max_new_tokens=3))
    assert all(image.leading_cls for image in adapter.generate(batch, visionzip, max_new_tokens=1).inputs.images)


def test_a_second_process_reads_what_the_first_wrote(tmp_path: Path) -> None:
    adapter = load("model", "tiny_llava", TargetModel).load()
    adapter.vision_cache = VisionCache(folder=str(tmp_path / "vision"))
    batch = duplicated_batch("tiny_llava", adapter)
    here = adapter.generate(batch, make_pipeline("rank", keep=0.5), max_new_tokens=4)
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from fopru.components import load
from fopru.models.base import TargetModel
from fopru.models.vision_cache import VisionCache
from tests.models.conftest import make_pipeline
from tests.models.test_vision_cache import duplicated_batch
adapter = load("model", "tiny_llava", TargetModel).load()
adapter.vision_cache = VisionCache(folder={str(tmp_path / "vision")!r})
out = adapter.generate(duplicated_batch("tiny_llava", adapter), make_pipeline("rank", keep=0.5), max_new_tokens=4)
stats = adapter.vision_cache.stats
print(json.dumps({{"tokens": out.tokens.tolist(), "hits": stats.hits, "misses": stats.misses}}))
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=environment, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["tokens"] == here.tokens.tolist()
    assert (there["hits"], there["misses"]) == (2, 0)


def misses_after(adapter: TargetModel, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline) -> int:
    assert adapter.vision_cache is not None
    before = adapter.vision_cache.stats.misses
    adapter.generate(batch, pipeline, max_new_tokens=2)
    return adapter.vision_cache.stats.misses - before


def test_a_changed_fingerprint_processor_setting_or_tap_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = load("model", "tiny_llava", TargetModel).load()
    adapter.vision_cache = VisionCache(folder=str(tmp_path))
    batch = example_batch("tiny_llava", adapter, [0, 1])
    focal = make_pipeline("rank", keep=0.5)
    assert misses_after(adapter, batch, focal) == 2
    assert misses_after(adapter, batch, focal) == 0
    # Another tap layer, another reduction (logits instead of probabilities), no tap at all: each its own entries.
    other_layer = replace(focal, significance=replace(load("significance", "focal", SignificanceSource), layer=-1))
    assert misses_after(adapter, batch, other_layer) == 2
    no_tap = make_pipeline("rank", keep=0.5, significance="norm")
    assert no_tap.request.reduction is None
    assert misses_after(adapter, batch, no_tap) == 2
    assert misses_after(adapter, batch, no_tap) == 0
    # New weights at the same path.
    adapter._cache_contexts.clear()
    monkeypatch.setattr(adapter, "fingerprint", lambda: "sha256:retrained")
    assert misses_after(adapter, batch, focal) == 2
    # A processor setting, even one that leaves these pixels unchanged.
    context = adapter.cache_context(focal.request)
    adapter._cache_contexts.clear()
    monkeypatch.setattr(adapter.processor.image_processor, "do_convert_rgb", False)
    assert adapter.cache_context(focal.request) != context
    assert misses_after(adapter, batch, focal) == 2


def test_eviction_keeps_the_folder_under_the_cap_dropping_the_least_recently_used(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    probe = VisionCache(folder=str(tmp_path / "probe"))
    probe.put("ab" + "0" * 62, torch.zeros(1000), model)
    entry_size = probe.scan_size()
    cache = VisionCache(folder=str(tmp_path / "capped"), max_gb=3.5 * entry_size / 1e9)
    digests = [f"{index:02d}" + "0" * 62 for index in range(5)]
    for index, digest in enumerate(digests[:3]):
        cache.put(digest, torch.full((1000,), float(index)), model)
        os.utime(cache.path(digest), (time.time() - 100 + index, time.time() - 100 + index))
    assert cache.get(digests[0], model) is not None  # read: now the most recently used
    cache.put(digests[3], torch.zeros(1000), model)  # 4 entries > 3.5: back to at most 0.9 * 3.5
    assert cache.scan_size() <= 0.9 * cache.max_bytes
    assert cache.get(digests[1], model) is None, "the least recently used entry goes first"
    assert cache.get(digests[0], model) is not None and cache.get(digests[3], model) is not None
    assert cache.stats.evicted >= 1


def test_an_unreadable_or_foreign_entry_is_a_miss(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    cache = VisionCache(folder=str(tmp_path))
    torn = "aa" + "1" * 62
    cache.path(torn).parent.mkdir(parents=True)
    cache.path(torn).write_bytes(b"\x80\x05 torn")
    assert cache.get(torn, model) is None

    class Foreign:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getenv, ("HOME",))

    foreign = "bb" + "2" * 62
    cache.path(foreign).parent.mkdir(parents=True)
    cache.path(foreign).write_bytes(pickle.dumps(Foreign()))
    assert cache.get(foreign, model) is None


def test_model_objects_are_stored_by_name_and_resolved_in_the_loading_model(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    cache = VisionCache(folder=str(tmp_path))
    cache.put("cc" + "3" * 62, {"project": model[1], "weight": model[0].weight}, model)
    assert cache.scan_size() < 1000  # the module's weights are not copied into the entry
    other = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    entry = cache.get("cc" + "3" * 62, other)
    assert entry["project"] is other[1] and entry["weight"] is other[0].weight
    with pytest.raises(ConfigError, match="outside the model"):
        cache.put("dd" + "4" * 62, {"project": nn.Linear(1, 1)}, model)


@pytest.mark.parametrize("name", choices("cache"))
def test_every_cache_choice_builds(name: str) -> None:
    cache = instantiate(OmegaConf.load(CONFIG_DIR / "cache" / f"{name}.yaml"))
    assert isinstance(cache, VisionCache)
    assert cache.enabled == (name != "off")


@pytest.mark.parametrize("bad", [{"max_gb": 0}, {"max_gb": "lots"}, {"enabled": "yes"}])
def test_bad_cache_settings_name_the_value(bad: dict[str, object]) -> None:
    key, value = next(iter(bad.items()))
    with pytest.raises(ConfigError, match=f"cache.{key}={value!r}"):
        VisionCache(**bad)  # type: ignore[arg-type]
