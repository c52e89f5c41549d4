"""The prompt pieces lmms-eval's ``default`` (LLaVA) prompts share across tasks."""

from __future__ import annotations

import string
from collections.abc import Sequence

from fopru.errors import ConfigError

# lmms-eval's default post-prompts (the ones its LLaVA runs use).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."


def lettered(choices: Sequence[str]) -> str:
    """ "A. first\\nB. second", the option list of lmms-eval's multiple-choice prompts."""
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices, strict=False))


def option_letter(index: int | str, choices: Sequence[str], where: str) -> str:
    """The letter of option ``index`` (0 -> "A"); an index outside the options is an error naming ``where``."""
    position = int(index)
    if not 0 <= position < len(choices):
        raise ConfigError(f"{where}: answer index {index!r} is outside the {len(choices)} options")
    return string.ascii_uppercase[position]
