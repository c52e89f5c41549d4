"""Diagnostic: can the language model's state at a yes/no answer position tell the question's colour/shape word and
the image's colour and shape apart, even while its yes/no answers are at chance?

Train: a language phase (as ``stage=train``) with three extra linear heads on the last hidden state at the position
that predicts each yes/no answer, trained to name (1) the colour or shape word of the question, (2) the image's
colour and (3) its shape (the image's open answers in the same conversation); their cross-entropy is added to the
loss with weight ``W``. The heads are training-only, like the vision phase's probe.

    python experiments/training/aux_heads.py train W <train_eval overrides...>
    python experiments/training/aux_heads.py check <checkpoint folder> <lightning/language/last.ckpt> [-n 300]

``check`` reports each head's accuracy on yes/no test questions (images whose colour and shape questions are also in
the test split), unpruned.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import easy_vqa
import torch
from hydra import compose, initialize_config_dir
from yes_no_by_wording import answer_position, load  # this folder: run as a script

import fopru.train.data as data
import fopru.train.module as module
from fopru.components import CONFIG_DIR
from fopru.run import run

COLOURS = ["red", "green", "blue", "black", "gray", "teal", "brown", "yellow"]
SHAPES = ["circle", "rectangle", "triangle"]
HEADS = ("question word", "image colour", "image shape")
CONTEXT: dict[str, Any] = {}


def yes_no_targets(batch: dict[str, torch.Tensor]) -> tuple[list[int], list[int], list[list[int]]]:
    """(rows, positions predicting a yes/no answer, targets per head: -100 where unknown)."""
    tokenizer, image = CONTEXT["tokenizer"], CONTEXT["image_token"]
    colours = set(tokenizer.convert_tokens_to_ids(COLOURS))
    shapes = set(tokenizer.convert_tokens_to_ids(SHAPES))
    yes_no = set(tokenizer.convert_tokens_to_ids(["yes", "no"]))
    rows, positions, targets = [], [], [[], [], []]
    for row in range(batch["labels"].shape[0]):
        labels, tokens = batch["labels"][row].tolist(), batch["input_ids"][row].tolist()
        answers = [token for token in batch["answer_tokens"][row].tolist() if token != -100]
        colour = next((token for token in answers if token in colours), -100)
        shape = next((token for token in answers if token in shapes), -100)
        for t in range(1, len(labels)):
            if labels[t] in yes_no and labels[t - 1] == -100:
                word, u = -100, t - 1
                while u >= 0 and labels[u] == -100 and tokens[u] != image:  # back through this turn's question
                    if tokens[u] in colours | shapes:
                        word = tokens[u]
                        break
                    u -= 1
                rows.append(row)
                positions.append(t - 1)
                for head, target in enumerate((word, colour, shape)):
                    targets[head].append(target)
    return rows, positions, targets


def train(weight: float, overrides: list[str]) -> None:
    initialise, step = module.TrainingModule.__init__, module.TrainingModule.training_step
    collate = data.ConversationCollator.__call__

    def init(self: Any, model: Any, recipe: Any, phase: str = "language") -> None:
        initialise(self, model, recipe, phase)
        text = model.config.get_text_config()
        self.aux = torch.nn.ModuleList(torch.nn.Linear(text.hidden_size, text.vocab_size) for _ in HEADS)

    def training_step(self: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.phase != "language":
            return step(self, batch, batch_idx)
        output = self(batch, output_hidden_states=True)
        loss = output.loss if "label_weights" not in batch else module.weighted_loss(output.logits, batch)
        rows, positions, targets = yes_no_targets(batch)
        extra = loss * 0
        if rows:
            hidden = output.hidden_states[-1][torch.tensor(rows), torch.tensor(positions)]
            for head, target in zip(self.aux, targets, strict=True):
                if any(t != -100 for t in target):
                    extra = extra + torch.nn.functional.cross_entropy(
                        head(hidden), torch.tensor(target), ignore_index=-100
                    )
        self.log("train/lm_loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        self.log("train/aux_loss", extra, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss + weight * extra

    def call(self: Any, items: Any) -> dict[str, torch.Tensor]:
        CONTEXT["tokenizer"] = self.target.processor.tokenizer
        CONTEXT["image_token"] = self.target.model.config.image_token_id
        return collate(self, items)

    module.TrainingModule.__init__ = init  # type: ignore[method-assign]
    module.TrainingModule.training_step = training_step  # type: ignore[method-assign]
    data.ConversationCollator.__call__ = call  # type: ignore[method-assign]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        run(compose(config_name="train_eval", overrides=overrides))


def check(folder: str, checkpoint: str, count: int) -> None:
    model, processor, state = load(folder, checkpoint)
    heads = []
    for index in range(len(HEADS)):
        weight, bias = state[f"aux.{index}.weight"], state[f"aux.{index}.bias"]
        head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": weight, "bias": bias})
        heads.append(head)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    colour, shape = {}, {}
    for answer, image in zip(answers, image_ids, strict=True):
        if answer in COLOURS:
            colour[image] = answer
        if answer in SHAPES:
            shape[image] = answer
    chosen = [i for i, answer in enumerate(answers) if answer in ("yes", "no")]
    chosen = [i for i in chosen if image_ids[i] in colour and image_ids[i] in shape][:count]
    hits = [0] * len(HEADS)
    with torch.no_grad():
        for start in range(0, len(chosen), 50):
            batch = chosen[start : start + 50]
            paths_and_questions = [paths[image_ids[i]] for i in batch], [questions[i] for i in batch]
            hidden = answer_position(model, processor, *paths_and_questions).hidden_states[-1][:, -1]
            named = [processor.tokenizer.convert_ids_to_tokens(head(hidden).argmax(-1)) for head in heads]
            for j, i in enumerate(batch):
                word = next((w for w in re.findall(r"\w+", questions[i]) if w in COLOURS + SHAPES), None)
                truths = (word, colour[image_ids[i]], shape[image_ids[i]])
                for head in range(len(HEADS)):
                    hits[head] += named[head][j] == truths[head]
    for head, name in enumerate(HEADS):
        print(f"{name:14s} {hits[head] / len(chosen):.3f} of {len(chosen)}")


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(float(sys.argv[2]), sys.argv[3:])
    else:
        count = int(sys.argv[sys.argv.index("-n") + 1]) if "-n" in sys.argv else 300
        check(sys.argv[2], sys.argv[3], count)
