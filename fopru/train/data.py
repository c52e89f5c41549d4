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


def is_yes_no(answer: str) -> bool:
    """Whether an answer is of VQA's ``yes/no`` answer type (the others: ``number``, ``other``)."""
    return answer.strip().strip(".").lower() in ("yes", "no")


def held_out_positions(groups: Sequence[Any], fraction: float, seed: int) -> set[int]:
    """Row positions of a seeded ``fraction`` of the distinct ``groups`` (images): no image is on both sides."""
    distinct = sorted(set(groups), key=str)
    random.Random(seed).shuffle(distinct)
    held = set(distinct[: max(1, round(len(distinct) * fraction))])
    return {position for position, group in enumerate(groups) if group in held}


def answer_choices(prompts: Sequence[str], answers: Sequence[str], positions: Sequence[int]) -> dict[str, list[str]]:
    """Each question (prompt) at ``positions`` -> the answers it received there, sorted: what the answer probe chooses
    from when the question is asked (``what shape ...`` -> the shapes, ``what color ...`` -> the colours)."""
    choices: dict[str, set[str]] = defaultdict(set)
    for position in positions:
        choices[prompts[position]].add(str(answers[position]))
    return {prompt: sorted(seen) for prompt, seen in choices.items()}


def conversations(groups: Sequence[Any], positions: Sequence[int], max_turns: int | None, seed: int) -> list[list[int]]:
    """The rows at ``positions`` grouped by image, each image's rows in a seeded random order, cut into
    conversations of at most ``max_turns`` rows (None: one conversation per image)."""
    by_group: dict[Any, list[int]] = defaultdict(list)
    for position in positions:
        by_group[groups[position]].append(position)
    rng = random.Random(seed)
    result = []
    for group in sorted(by_group, key=str):
        rows = by_group[group]
        rng.shuffle(rows)
        size = max_turns or len(rows)
        result += [rows[start : start + size] for start in range(0, len(rows), size)]
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
    ``answer_tokens`` (the first token of each turn's answer; -100 for yes/no answers, which the image alone cannot
    predict, and past the last turn) are the answer probe's targets and ``answer_choices`` (turn x vocabulary) the
    first tokens it chooses from: the question's answers in ``choices`` (all tokens for questions not in it).
    ``augment="dihedral"`` turns each image's pixels by a seeded random one of the 8 symmetries of the square.
    ``text=False`` (the vision phase) leaves out the token sequences: pixels and probe targets only.
    """

    def __init__(
        self,
        target: TargetModel,
        augment: str = "none",
        seed: int = 0,
        choices: dict[str, list[str]] | None = None,
        text: bool = True,
    ) -> None:
        self.target = target
        self.choices = choices or {}
        self.text = text
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def transform(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (channels, height, width) under the augmentation."""
        if self.augment == "none":
            return pixels
        symmetry = int(torch.randint(8, (1,), generator=self.generator))
        turned = torch.rot90(pixels, symmetry % 4, dims=(-2, -1))
        return turned.flip(-1) if symmetry >= 4 else turned

    def ids(self, text: str) -> list[int]:
        return list(self.target.processor.tokenizer(text, add_special_tokens=False).input_ids)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.probe_targets(items)
        if not self.text:
            pixels = self.target.processor.image_processor([item["image"] for item in items], return_tensors="pt")
            return {"pixel_values": torch.stack([self.transform(p) for p in pixels["pixel_values"]]), **batch}
        return {**batch, **self.sequences(items)}

    def probe_targets(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``answer_tokens`` and ``answer_choices`` (see the class docstring)."""
        turns = max(len(item["turns"]) for item in items)
        answer_tokens = torch.full((len(items), turns), IGNORE, dtype=torch.long)
        answer_choices = torch.zeros((len(items), turns, len(self.target.processor.tokenizer)), dtype=torch.bool)
        for sample, item in enumerate(items):
            for turn, (prompt, answer) in enumerate(item["turns"]):
                if not is_yes_no(answer):
                    answer_tokens[sample, turn] = self.ids(f" {answer}")[0]
                if prompt in self.choices:
                    answer_choices[sample, turn, [self.ids(f" {choice}")[0] for choice in self.choices[prompt]]] = True
                else:
                    answer_choices[sample, turn] = True
        return {"answer_tokens": answer_tokens, "answer_choices": answer_choices}

    def sequences(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The conversations' token ids, labels, mask and positions, and the (augmented) pixels."""
        processor = self.target.processor
        tokenizer = processor.tokenizer
        sequences: list[tuple[list[int], list[int]]] = []
        pixel_values = []
        for item in items:
            (first_prompt, _), *_ = item["turns"]
            first = processor(
                images=[item["image"]], text=[self.target.format_prompt(first_prompt)], return_tensors="pt"
            )
            pixel_values.append(self.transform(first["pixel_values"][0]))
            tokens: list[int] = first["input_ids"][0].tolist()
            labels = [IGNORE] * len(tokens)
            for turn, (prompt, answer) in enumerate(item["turns"]):
                if turn > 0:
                    question = self.ids(self.target.follow_up_template.format(text=prompt))
                    tokens += question
                    labels += [IGNORE] * len(question)
                reply = self.ids(f" {answer}{tokenizer.eos_token}")
                tokens += reply
                labels += reply
            sequences.append((tokens, labels))
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
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(pixel_values),
            "position_ids": (attention_mask.cumsum(dim=-1) - 1).clamp_min(0),
            "labels": label_ids,
        }


class TrainingDataModule(L.LightningDataModule):
    """The benchmark's training split as conversations of at most ``max_turns`` questions (None: all of an image's),
    minus held-out whole images used for validation."""

    def __init__(
        self,
        benchmark: Benchmark,
        target: TargetModel,
        recipe: TrainingRecipe,
        seed: int,
        batch_size: int,
        max_turns: int | None,
        text: bool = True,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.train_collate = ConversationCollator(target, recipe.augment, seed, text=text)
        self.collate = ConversationCollator(target, text=text)
        self.recipe = recipe
        self.seed = seed
        self.batch_size = batch_size
        self.max_turns = max_turns
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
        turns = self.max_turns
        choices = answer_choices(list(dataset["prompt"]), [str(a) for a in dataset["answer"]], train)
        self.train_collate.choices = self.collate.choices = choices
        self.train_set = ConversationSet(dataset, conversations(groups, train, turns, self.seed))
        self.val_set = ConversationSet(dataset, conversations(groups, val, turns, self.seed))

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.train_set is not None
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.train_collate,
        )

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate)
