"""Unpruned accuracy of a mini LLaVA on the whole easy-VQA test split, by kind of question.

    python experiments/training/by_kind.py fopru/checkpoints/mini_llava [--lightning <run>/lightning/language/last.ckpt]

Kinds: colour names, shape names, yes/no about a colour or a shape, negated ("not") or not. First answer token
(greedy), prompted as the evaluation prompts it; the total equals ``python train_eval.py strategy=none``.
"""

from __future__ import annotations

import argparse
from collections import Counter

import easy_vqa
import torch
from yes_no_by_wording import COLOURS, SHAPES, answer_position, kind, load  # this folder: run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a save_pretrained folder (model and processor)")
    parser.add_argument("--lightning", help="a stage=train lightning/<phase>/last.ckpt whose weights replace them")
    args = parser.parse_args()
    model, processor, _ = load(args.checkpoint, args.lightning)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    right, total = Counter[str](), Counter[str]()
    with torch.no_grad():
        for start in range(0, len(questions), 100):
            batch = list(range(start, min(len(questions), start + 100)))
            output = answer_position(
                model, processor, [paths[image_ids[i]] for i in batch], [questions[i] for i in batch]
            )
            predicted = processor.tokenizer.convert_ids_to_tokens(output.logits[:, -1].argmax(-1))
            for i, token in zip(batch, predicted, strict=True):
                if answers[i] in COLOURS:
                    keys = ["colour name"]
                elif answers[i] in SHAPES:
                    keys = ["shape name"]
                else:
                    keys = ["yes/no", f"yes/no {kind(questions[i])}"]
                for key in [*keys, "all"]:
                    total[key] += 1
                    right[key] += token == answers[i]
    for key in sorted(total):
        print(f"{key:20s} {total[key]:5d} {100 * right[key] / total[key]:.1f}%")


if __name__ == "__main__":
    main()
