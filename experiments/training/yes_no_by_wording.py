"""Accuracy of a mini LLaVA on easy-VQA's yes/no test questions by kind, next to the wording prior.

    python experiments/training/yes_no_by_wording.py fopru/checkpoints/mini_llava \
        [--lightning <run>/lightning/language/last.ckpt] [-n 1500]

Kinds: colour or shape questions, negated ("not") or not. The prior answers each question with the answer its exact
wording received most often in the training split. Unpruned, the first answer token (greedy), as the evaluation
prompts it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from typing import Any

import easy_vqa
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from fopru.prompts import SHORT_ANSWER

COLOURS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
SHAPES = {"circle", "rectangle", "triangle"}


def kind(question: str) -> str:
    words = set(re.findall(r"\w+", question))
    return ("colour" if words & COLOURS else "shape") + (" not" if "not" in words else "")


def load(checkpoint: str, lightning: str | None) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """(model, processor, Lightning state dict or {}) of a saved checkpoint, its weights replaced by ``lightning``'s."""
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = LlavaProcessor.from_pretrained(checkpoint)
    state: dict[str, torch.Tensor] = {}
    if lightning:
        state = torch.load(lightning, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model, processor, state


def answer_position(model: Any, processor: Any, paths: list[str], questions: list[str]) -> Any:
    """The model's output (with hidden states) on each image and question, prompted as the evaluation does; the last
    position is the one that predicts the answer."""
    images = [Image.open(path).convert("RGB") for path in paths]
    prompts = [f"USER: <image>\n{question}{SHORT_ANSWER} ASSISTANT:" for question in questions]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    return model(**inputs, position_ids=positions, output_hidden_states=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a save_pretrained folder (model and processor)")
    parser.add_argument("--lightning", help="a stage=train lightning/<phase>/last.ckpt whose weights replace them")
    parser.add_argument("-n", type=int, default=1500, help="the first n yes/no questions of the test split")
    args = parser.parse_args()
    model, processor, _ = load(args.checkpoint, args.lightning)
    wording: dict[str, Counter[str]] = defaultdict(Counter)
    for question, answer in zip(*easy_vqa.get_train_questions()[:2], strict=True):
        wording[question][answer] += 1
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    chosen = [i for i, answer in enumerate(answers) if answer in ("yes", "no")][: args.n]
    right, prior, total = Counter[str](), Counter[str](), Counter[str]()
    with torch.no_grad():
        for start in range(0, len(chosen), 50):
            batch = chosen[start : start + 50]
            output = answer_position(
                model, processor, [paths[image_ids[i]] for i in batch], [questions[i] for i in batch]
            )
            tokens = output.logits[:, -1].argmax(-1)
            for i, predicted in zip(batch, processor.tokenizer.convert_ids_to_tokens(tokens), strict=True):
                key = kind(questions[i])
                total[key] += 1
                right[key] += predicted == answers[i]
                seen = wording.get(questions[i])
                prior[key] += (seen.most_common(1)[0][0] if seen else "yes") == answers[i]
    for key in sorted(total):
        print(f"{key:12s} {total[key]:5d}  model {right[key] / total[key]:.3f}  prior {prior[key] / total[key]:.3f}")
    print(
        f"{'all':12s} {sum(total.values()):5d}  model {sum(right.values()) / sum(total.values()):.3f}  "
        f"prior {sum(prior.values()) / sum(total.values()):.3f}"
    )


if __name__ == "__main__":
    main()
