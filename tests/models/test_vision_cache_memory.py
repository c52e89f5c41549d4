"""The vision cache's in-memory layer: a hit there reads no file; bounded by bytes, least recently used first."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fopru.errors import ConfigError
from fopru.models.vision_cache import VisionCache


class FileReads:
    """Counts the entry files the cache reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = Path.read_bytes

        def counted(path: Path) -> bytes:
            if path.suffix == ".pt":
                self.count += 1
            return original(path)

        monkeypatch.setattr(Path, "read_bytes", counted)


def digest(number: int) -> str:
    return f"{number:02d}" + "0" * 62


def test_a_hit_in_memory_reads_no_file_and_another_process_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Linear(2, 2)
    reads = FileReads(monkeypatch)
    cache = VisionCache(folder=str(tmp_path))
    cache.put(digest(1), torch.arange(10.0), model)
    assert torch.equal(cache.get(digest(1), model), torch.arange(10.0))
    assert reads.count == 0 and cache.stats.hits == cache.stats.memory_hits == 1
    other = VisionCache(folder=str(tmp_path))  # a fresh process: its memory is empty, the file is there
    assert torch.equal(other.get(digest(1), model), torch.arange(10.0))
    assert reads.count == 1 and other.stats.hits == 1 and other.stats.memory_hits == 0
    assert torch.equal(other.get(digest(1), model), torch.arange(10.0))  # read once, then remembered
    assert reads.count == 1 and other.stats.memory_hits == 1


def test_memory_is_bounded_by_bytes_dropping_the_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Linear(2, 2)
    probe = VisionCache(folder=str(tmp_path / "probe"))
    probe.put(digest(0), torch.zeros(1000), model)
    size = probe.scan_size()
    cache = VisionCache(folder=str(tmp_path / "bounded"), memory_mb=2.5 * size / 1e6)
    for number in range(3):
        cache.put(digest(number), torch.full((1000,), float(number)), model)  # 3 entries: the first is dropped
    reads = FileReads(monkeypatch)
    assert float(cache.get(digest(2), model)[0]) == 2.0 and reads.count == 0
    assert float(cache.get(digest(1), model)[0]) == 1.0 and reads.count == 0
    assert float(cache.get(digest(0), model)[0]) == 0.0 and reads.count == 1  # from its file, now remembered ...
    assert float(cache.get(digest(2), model)[0]) == 2.0 and reads.count == 2  # ... in place of the oldest one
    unbuffered = VisionCache(folder=str(tmp_path / "bounded"), memory_mb=0)
    for _ in range(2):
        unbuffered.get(digest(1), model)
    assert reads.count == 4 and unbuffered.stats.memory_hits == 0


def test_an_entry_evicted_from_the_folder_leaves_memory_too(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    probe = VisionCache(folder=str(tmp_path / "probe"))
    probe.put(digest(0), torch.zeros(1000), model)
    size = probe.scan_size()
    cache = VisionCache(folder=str(tmp_path / "capped"), max_gb=1.5 * size / 1e9)
    cache.put(digest(1), torch.zeros(1000), model)
    os.utime(cache.path(digest(1)), (time.time() - 100, time.time() - 100))
    cache.put(digest(2), torch.ones(1000), model)  # past the cap: the older entry leaves the folder
    assert not cache.path(digest(1)).exists() and cache.stats.evicted == 1
    assert cache.get(digest(1), model) is None, "an evicted entry is not served from memory either"
    assert cache.get(digest(2), model) is not None


def test_memory_holds_only_the_entries_of_the_model_last_seen(tmp_path: Path) -> None:
    first, second = nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3))
    cache = VisionCache(folder=str(tmp_path))
    cache.put(digest(3), {"project": first[0]}, first)
    assert cache.get(digest(3), first)["project"] is first[0]
    assert cache.get(digest(3), second)["project"] is second[0]  # resolved in the model asking, from the file


def test_image_digests_are_content_addressed() -> None:
    pixels = torch.rand(1, 3, 8, 8)
    same = VisionCache.image_digest("context", [("pixel_values", pixels.clone())])
    assert same == VisionCache.image_digest("context", [("pixel_values", pixels)])
    changed = pixels.clone()
    changed[0, 1, 2, 3] += 1e-3
    assert VisionCache.image_digest("context", [("pixel_values", changed)]) != same
    assert VisionCache.image_digest("other", [("pixel_values", pixels)]) != same
    assert VisionCache.image_digest("context", [("pixel_values", pixels.transpose(2, 3))]) != same
    assert VisionCache.image_digest("context", [("pixel_values", pixels.double())]) != same


@pytest.mark.parametrize("bad", [-1, "lots", True])
def test_a_bad_memory_size_names_the_value(bad: object) -> None:
    with pytest.raises(ConfigError, match=f"cache.memory_mb={bad!r}"):
        VisionCache(memory_mb=bad)  # type: ignore[arg-type]
