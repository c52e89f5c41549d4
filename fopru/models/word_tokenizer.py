"""A small word-level tokenizer made in memory, with the special tokens LVLM processors need."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BASE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
WORDS = (
    "USER", "ASSISTANT", ":", "?", ".", ",", "\n", "what", "is", "the", "shape", "color", "of", "in", "this",
    "image", "there", "a", "an", "does", "contain", "answer", "with", "one", "word", "circle", "rectangle",
    "triangle", "red", "green", "blue", "yellow", "black", "gray", "teal", "brown", "yes", "no", "not",
)  # fmt: skip


def word_tokenizer(extra_specials: Sequence[str], words: Sequence[str] = WORDS) -> PreTrainedTokenizerFast:
    """Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then ``extra_specials``, then ``words``; left padding.

    Text splits on whitespace and punctuation; a word outside the vocabulary becomes ``<unk>``.
    """
    vocabulary = [*BASE_SPECIALS, *extra_specials, *words]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    return tokenizer
