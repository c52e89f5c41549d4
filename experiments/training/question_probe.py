"""Experiment: the language phase with a question-end probe and a positive-first curriculum (what breaks the yes/no
comparison plateau in ``text_comparison.py``), on images.

Adds to the language phase of ``stage=train``: a linear head on the output of language-model layer 2 at each
question's "?" (the last "?" before its answer), trained with weight ``W`` to predict the answer's first token (all
answers; with ``train.balance_yes_no`` weighted like the answer); and, for the first ``K`` steps, the answers to
negated yes/no questions ("not" / "no" in the question) left out of the loss. The head is training-only.

    python experiments/training/question_probe.py W K <train_eval overrides...>
    python experiments/training/yes_no_by_wording.py fopru/checkpoints/mini_llava \
        --lightning <run>/lightning/language/last.ckpt -n 600
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from transformers import LlavaProcessor

import fopru.train.module as module
from fopru.components import CONFIG_DIR
from fopru.run import run

LAYER = 2
CHECKPOINT = "fopru/checkpoints/mini_llava"


def answers(batch: dict[str, torch.Tensor], tokens: dict[str, Any]) -> list[tuple[int, int, int, int, bool]]:
    """(row, first answer position, end, position of the question's "?", negated yes/no) of each answer."""
    found = []
    for row in range(batch["labels"].shape[0]):
        labels, ids = batch["labels"][row].tolist(), batch["input_ids"][row].tolist()
        t = 1
        while t < len(labels):
            if labels[t] != -100 and labels[t - 1] == -100:
                end = t
                while end < len(labels) and labels[end] != -100:
                    end += 1
                mark = t - 1
                while mark > 0 and ids[mark] != tokens["?"]:
                    mark -= 1
                u, negation = mark, False  # back through the question, to the image or the previous answer's </s>
                while u > 0 and labels[u] == -100 and ids[u] != tokens["eos"]:
                    negation |= ids[u] in tokens["negations"]
                    if ids[u] == tokens["image"]:
                        break
                    u -= 1
                found.append((row, t, end, mark, negation and labels[t] in tokens["yes/no"]))
                t = end
            t += 1
    return found


def main(weight: float, curriculum: int, overrides: list[str]) -> None:
    tokenizer = LlavaProcessor.from_pretrained(CHECKPOINT).tokenizer
    tokens = {
        "?": tokenizer.convert_tokens_to_ids("?"),
        "eos": tokenizer.eos_token_id,
        "image": tokenizer.convert_tokens_to_ids("<image>"),
        "negations": set(tokenizer.convert_tokens_to_ids(["not", "no"])),
        "yes/no": set(tokenizer.convert_tokens_to_ids(["yes", "no"])),
    }
    initialise, step = module.TrainingModule.__init__, module.TrainingModule.training_step

    def init(self: Any, model: Any, recipe: Any, phase: str = "language") -> None:
        initialise(self, model, recipe, phase)
        if phase == "language":
            text = model.config.get_text_config()
            self.question_probe = torch.nn.Linear(text.hidden_size, text.vocab_size)

    def training_step(self: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.phase != "language":
            return step(self, batch, batch_idx)
        found = answers(batch, tokens)
        if self.global_step < curriculum:
            labels = batch["labels"].clone()
            for row, first, end, _, negated in found:
                if negated:
                    labels[row, first:end] = -100
            batch = {**batch, "labels": labels}
            if "label_weights" in batch:
                batch["label_weights"] = batch["label_weights"] * (labels != -100)
            found = [answer for answer in found if not answer[4]]
        output = self(batch, output_hidden_states=True)
        loss = output.loss if "label_weights" not in batch else module.weighted_loss(output.logits, batch)
        rows, marks = torch.tensor([a[0] for a in found]), torch.tensor([a[3] for a in found])
        targets = torch.tensor([int(batch["labels"][a[0], a[1]]) for a in found])
        logits = self.question_probe(output.hidden_states[LAYER][rows, marks])
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        if "label_weights" in batch:
            weights = torch.tensor([float(batch["label_weights"][a[0], a[1]]) for a in found])
            extra = (losses * weights).sum() / weights.sum()
        else:
            extra = losses.mean()
        size = batch["labels"].shape[0]
        self.log("train/lm_loss", loss, prog_bar=True, batch_size=size)
        self.log("train/question_probe", extra, prog_bar=True, batch_size=size)
        return loss + weight * extra

    module.TrainingModule.__init__ = init  # type: ignore[method-assign]
    module.TrainingModule.training_step = training_step  # type: ignore[method-assign]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        run(compose(config_name="train_eval", overrides=overrides))


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
