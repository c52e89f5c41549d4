import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fopru.eval.data import ShardSampler
from fopru.eval.records import PredictionStore, finished_ids, read_records


def test_records_from_every_rank_are_read_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    PredictionStore(tmp_path, 0).append([{"sample_id": "a", "prediction": "x"}, {"sample_id": "b", "prediction": "y"}])
    PredictionStore(tmp_path, 1).append([{"sample_id": "c", "prediction": "z"}])
    with (tmp_path / "predictions.rank1.jsonl").open("a") as handle:
        handle.write('{"sample_id": "d", "predic')  # a crash in the middle of a write
    assert finished_ids(tmp_path) == {"a", "b", "c"}
    PredictionStore(tmp_path, 0).append([{"sample_id": "a", "prediction": "again"}])
    records = {record["sample_id"]: record for record in read_records(tmp_path)}
    assert records["a"]["prediction"] == "x"  # the first prediction of a sample wins
    assert len(records) == 3


def test_each_append_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path, 0)
    store.append([{"sample_id": "a"}])
    assert [json.loads(line) for line in store.path.read_text().splitlines()] == [{"sample_id": "a"}]


@given(size=st.integers(0, 50), world=st.integers(1, 5))
def test_shards_cover_every_sample_exactly_once(size: int, world: int) -> None:
    shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
    assert sorted(index for shard in shards for index in shard) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_torn_last_line_is_cut_off_before_the_next_append_so_no_sample_is_lost(tmp_path: Path) -> None:
    PredictionStore(tmp_path, 0).append([{"sample_id": "a", "prediction": "x"}])
    path = tmp_path / "predictions.rank0.jsonl"
    with path.open("a") as handle:
        handle.write('{"sample_id": "b", "predic')  # a crash in the middle of a write
    assert finished_ids(tmp_path) == {"a"}  # so the next run predicts b again
    PredictionStore(tmp_path, 0).append([{"sample_id": "b", "prediction": "y"}, {"sample_id": "c", "prediction": "z"}])
    assert {record["sample_id"]: record["prediction"] for record in read_records(tmp_path)} == {
        "a": "x",
        "b": "y",
        "c": "z",
    }
    assert [json.loads(line)["sample_id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_a_record_made_from_another_prompt_is_stale_and_predicted_again(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path, 0)
    store.append([{"sample_id": "a", "prompt": "Old wording?", "prediction": "x"}])
    store.append([{"sample_id": "b", "prompt": "Same?", "prediction": "y"}])
    prompts = {"a": "New wording?", "b": "Same?"}  # the benchmark's prompt code changed for a
    assert finished_ids(tmp_path, prompts) == {"b"}
    store.append([{"sample_id": "a", "prompt": "New wording?", "prediction": "z"}])
    assert {record["sample_id"]: record["prediction"] for record in read_records(tmp_path, prompts)} == {
        "a": "z",
        "b": "y",
    }
