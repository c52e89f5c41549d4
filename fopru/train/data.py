"""Training batches: a benchmark's training split as multi-turn conversations about each image, with a held-out
validation set of whole images.

Like LLaVA's instruction data, one sequence holds one image and several of its questions as successive turns
(``USER: <image>\\n<q1> ASSISTANT: <a1></s>USER: <q2> ASSISTANT: <a2></s>...``), with the loss on the answers only.
The image is encoded once for all its questions, so a step carries several times more answers for its cost than
one question per sequence; the first turn is exactly the prompt evaluation prefills.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fopru.data.base import Benchmark
from fopru.models.base import TargetModel
from fopru.train.recipe import TrainingRecipe

IGNORE = -100


def held_out_positions(groups: Sequence[Any], fraction: float, seed: int) -> set[int]:
    """Row positions of a seeded ``fraction`` of the distinct ``groups`` (images): no image is on both sides."""
    distinct = sorted(set(groups), key=str)
    random.Random(seed).shuffle(distinct)
    held = set(distinct[: max(1, round(len(distinct) * fraction))])
    return {position for position, group in enumerate(groups) if group in held}


def conversations(groups: Sequence[Any], positions: Sequence[int], max_turns: int, seed: int) -> list[list[int]]:
    """The rows at ``positions`` grouped by image, each image's rows in a seeded random order, cut into
    conversations of at most ``max_turns`` rows."""
    by_group: dict[Any, list[int]] = defaultdict(list)
    for position in positions:
        by_group[groups[position]].append(position)
    rng = random.Random(seed)
    result = []
    for group in sorted(by_group, key=str):
        rows = by_group[group]
        rng.shuffle(rows)
        result += [rows[start : start + max_turns] for start in range(0, len(rows), max_turns)]
    return result


class ConversationSet(Dataset[dict[str, Any]]):
    """One item per conversation: the image and its (prompt, answer) turns."""

    def __init__(self, dataset: Any, chunks: list[list[int]]) -> None:
        self.dataset = dataset
        self.prompts = list(dataset["prompt"])
        self.answers = [str(answer) for answer in dataset["answer"]]
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows = self.chunks[index]
        return {
            "image": self.dataset[rows[0]]["image"],
            "turns": [(self.prompts[row], self.answers[row]) for row in rows],
        }


class ConversationCollator:
    """Conversations -> the model's inputs for teacher forcing, left-padded, loss on the answer tokens only.

    The first turn is the prompt evaluation uses (:meth:`TargetModel.format_prompt`, the processor expanding the
    image placeholder), later turns follow :attr:`TargetModel.follow_up_template`; each answer is
    ``" <answer></s>"``. Positions count real tokens from 0, as the adapters number an unpruned prompt.
    """

    def __init__(self, target: TargetModel) -> None:
        self.target = target

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        processor = self.target.processor
        tokenizer = processor.tokenizer

        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False).input_ids)

        sequences: list[tuple[list[int], list[int]]] = []
        pixel_values = []
        first_answer_tokens: list[list[int]] = []
        for item in items:
            (first_prompt, _), *_ = item["turns"]
            first = processor(
                images=[item["image"]], text=[self.target.format_prompt(first_prompt)], return_tensors="pt"
            )
            pixel_values.append(first["pixel_values"][0])
            tokens: list[int] = first["input_ids"][0].tolist()
            labels = [IGNORE] * len(tokens)
            for turn, (prompt, answer) in enumerate(item["turns"]):
                if turn > 0:
                    question = ids(self.target.follow_up_template.format(text=prompt))
                    tokens += question
                    labels += [IGNORE] * len(question)
                reply = ids(f" {answer}{tokenizer.eos_token}")
                tokens += reply
                labels += reply
            sequences.append((tokens, labels))
            first_answer_tokens.append([ids(f" {answer}")[0] for _, answer in item["turns"]])
        length = max(len(tokens) for tokens, _ in sequences)
        batch = len(sequences)
        input_ids = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long)
        label_ids = torch.full((batch, length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for sample, (tokens, labels) in enumerate(sequences):
            pad = length - len(tokens)
            input_ids[sample, pad:] = torch.tensor(tokens)
            label_ids[sample, pad:] = torch.tensor(labels)
            attention_mask[sample, pad:] = 1
        turns = max(len(answers) for answers in first_answer_tokens)
        answer_tokens = torch.full((batch, turns), IGNORE, dtype=torch.long)
        for sample, answers in enumerate(first_answer_tokens):
            answer_tokens[sample, : len(answers)] = torch.tensor(answers)
        return {
            "answer_tokens": answer_tokens,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(pixel_values),
            "position_ids": (attention_mask.cumsum(dim=-1) - 1).clamp_min(0),
            "labels": label_ids,
        }


class TrainingDataModule(L.LightningDataModule):
    """The benchmark's training split as conversations, minus held-out whole images used for validation."""

    def __init__(self, benchmark: Benchmark, target: TargetModel, recipe: TrainingRecipe, seed: int) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.collate = ConversationCollator(target)
        self.recipe = recipe
        self.seed = seed
        self.train_set: ConversationSet | None = None
        self.val_set: ConversationSet | None = None

    def setup(self, stage: str | None = None) -> None:
        dataset = self.benchmark.load()
        groups = list(dataset["image_id"] if "image_id" in dataset.column_names else dataset["sample_id"])
        held = held_out_positions(groups, self.recipe.val_fraction, self.seed)
        train = [position for position in range(len(dataset)) if position not in held]
        val = sorted(held)
        if self.recipe.val_samples is not None and len(val) > self.recipe.val_samples:
            val = sorted(random.Random(self.seed).sample(val, self.recipe.val_samples))
        turns = self.recipe.max_turns
        self.train_set = ConversationSet(dataset, conversations(groups, train, turns, self.seed))
        self.val_set = ConversationSet(dataset, conversations(groups, val, turns, self.seed))

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.train_set is not None
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.recipe.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collate,
        )

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.recipe.batch_size, collate_fn=self.collate)
