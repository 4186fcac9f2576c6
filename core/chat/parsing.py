"""Parse chat text in the Midjourney style users know: ``a lighthouse at dusk --ar 16:9 --quality high``.

- Flags may stand anywhere, in any order, as ``--ar 16:9`` or ``--ar=16:9``.
- Phones turn ``--`` into an em dash (``—ar``) or en dash (``–ar``): both are read as ``--``.
- Every flag has aliases (``--ar``/``--aspect``, ``--quality``/``--q``), taken from the model catalog.
- Anything wrong (an unknown flag, a missing or bad value, a flag twice, an empty or too long prompt, a
  banned word) raises ``UserInputError`` whose message lists what is valid. Nothing else is ever raised.
- ``whole_number`` reads every number a user types anywhere (credits in chat and on the command line, a
  ``--limit``): bounded in length before ``int()`` and in value after it, refused in one plain line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from imagine_bot.core.errors import NumberRefused, UserInputError
from imagine_bot.core.gateway.catalog import InputSpec, ModelSpec

_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DASHES = re.compile(r"(?<!\S)[\u2014\u2013\u2012\u2015\u2212]{1,2}(?=[A-Za-z])")
_FLAG = re.compile(r"^--([A-Za-z][\w-]*)(?:=(.*))?$", re.DOTALL)
_IMAGE_FLAG = re.compile(r"(?<!\S)--(?:image|img)(?:=|\s+)(\S+)", re.IGNORECASE)
_PRESET_FLAG = re.compile(r"(?<!\S)--preset(?:=|\s+|$)(\S*)", re.IGNORECASE)
#: a side of a ratio has at most 4 digits after any leading zeros: a longer one is no ratio we offer (and
#: never reaches ``int()``, which refuses more than 4300 digits with a ValueError of its own)
_RATIO_SEP = re.compile(r"^\s*0*(\d{1,4})\s*[:x×/]\s*0*(\d{1,4})\s*$", re.IGNORECASE)
#: the longest number read at all: "-1,000,000,000" and room to spare; a longer token is refused unread
MAX_NUMBER_CHARS = 20
_WHOLE = re.compile(r"[+-]?[0-9]+")


def whole_number(raw: str, label: str, low: int, high: int) -> int:
    """A whole number a user typed (``1000``, ``1,000``, ``1_000``, ``-50``) from ``low`` to ``high``, or
    ``NumberRefused``. The token's length is checked before ``int()``, so neither a 5,000-digit token (past
    Python's limit) nor 10^40 (past SQLite's integers) gets further than a one-line answer."""
    text = raw.strip()
    digits = text.replace(",", "").replace("_", "")
    if len(text) > MAX_NUMBER_CHARS or not _WHOLE.fullmatch(digits):
        raise NumberRefused(raw, label, low, high)
    value = int(digits)
    if not low <= value <= high:
        raise NumberRefused(raw, label, low, high)
    return value


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    prompt: str
    params: dict[str, str]
    #: the inputs the text itself set with a flag (the rest came from defaults)
    flagged: frozenset[str] = frozenset()


def usage(model: ModelSpec) -> str:
    parts = []
    for spec in model.inputs:
        flags = "/".join(f"--{f}" for f in spec.flags[:2])
        parts.append(f"{flags} {'|'.join(spec.choices)} (default {spec.default})")
    return "Usage: /imagine <prompt> " + " ".join(f"[{p}]" for p in parts)


def _clean(text: str) -> str:
    # drop control characters (keep newlines and tabs as spaces), normalise dashes typed on phones
    if text.isascii():  # most prompts: ASCII's only control characters (Cc; it has no Cf) in one pass, and
        return _ASCII_CONTROL.sub(" ", text)  # no phone dash (every one of them is outside ASCII)
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\u200d" else ch
                   for ch in text)
    return _DASHES.sub("--", text)


def _normalise_value(spec: InputSpec, raw: str) -> str:
    value = raw.strip().strip("\"'`").lower()
    if spec.name == "aspect_ratio":
        match = _RATIO_SEP.match(value)
        if match:
            value = f"{int(match.group(1))}:{int(match.group(2))}"
    if value not in spec.choices:
        shown = raw.strip()[:40] or "nothing"
        raise UserInputError(
            f"`{shown}` is not a valid {spec.name.replace('_', ' ')}. Choose one of: {', '.join(spec.choices)}."
        )
    return value


def _flag_table(model: ModelSpec) -> dict[str, InputSpec]:
    return _flags_of(model.inputs)


@lru_cache(maxsize=32)  # a handful of models: built once each, not at every command
def _flags_of(inputs: tuple[InputSpec, ...]) -> dict[str, InputSpec]:
    table: dict[str, InputSpec] = {}
    for spec in inputs:
        for flag in (*spec.flags, spec.name, spec.name.replace("_", "-")):
            table[flag.lower()] = spec
    return table


def _valid_flags(model: ModelSpec) -> str:
    return ", ".join(f"--{spec.flags[0]}" + (f" (or --{spec.flags[1]})" if len(spec.flags) > 1 else "")
                     for spec in model.inputs)


def parse_imagine(text: str, model: ModelSpec, *, banned_words: Iterable[str] = (),
                  defaults: dict[str, str] | None = None) -> ParsedPrompt:
    """Split chat text into a prompt and validated model inputs (defaults filled in)."""
    table = _flag_table(model)
    tokens = _clean(text).split()
    words: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            raise UserInputError(f"A flag name is missing after `--`. Valid flags: {_valid_flags(model)}.")
        match = _FLAG.match(token) if token.startswith("--") else None
        if not match:
            words.append(token)
            continue
        name, inline = match.group(1).lower(), match.group(2)
        spec = table.get(name)
        if spec is None:
            raise UserInputError(f"`--{name[:30]}` is not a flag I know. Valid flags: {_valid_flags(model)}.")
        if inline is None:
            if i >= len(tokens) or _FLAG.match(tokens[i]):
                raise UserInputError(
                    f"`--{name}` needs a value: one of {', '.join(spec.choices)}."
                )
            inline = tokens[i]
            i += 1
        if spec.name in params:
            raise UserInputError(f"The {spec.name.replace('_', ' ')} is given twice. Give it once.")
        params[spec.name] = _normalise_value(spec, inline)

    prompt = " ".join(words).strip()
    if not prompt:
        raise UserInputError(f"Tell me what to draw. {usage(model)}")
    if len(prompt) > model.max_prompt_chars:
        raise UserInputError(
            f"The prompt is {len(prompt)} characters long; the limit is {model.max_prompt_chars}. Please shorten it."
        )
    check_banned(prompt, banned_words)
    return ParsedPrompt(prompt, {**model.defaults(), **(defaults or {}), **params}, frozenset(params))


def take_images(text: str) -> tuple[str, list[str]]:
    """Split ``--image <url or path>`` (repeatable, also ``--image=...``) out of chat text, in order."""
    cleaned = _clean(text)
    images = [m.group(1).strip("<>\"'`") for m in _IMAGE_FLAG.finditer(cleaned)]
    if not images:
        return text, []
    return _IMAGE_FLAG.sub(" ", cleaned).strip(), images


def take_preset(text: str) -> tuple[str, str | None]:
    """Split ``--preset NAME`` (also ``--preset=NAME``) out of chat text: the rest and the name as typed."""
    cleaned = _clean(text)
    found = [m.group(1).strip("<>\"'`") for m in _PRESET_FLAG.finditer(cleaned)]
    if not found:
        return text, None
    if len(found) > 1:
        raise UserInputError("The preset is given twice. Give it once.")
    if not found[0] or found[0].startswith("--"):
        raise UserInputError("`--preset` needs a name (or `none`).")
    return _PRESET_FLAG.sub(" ", cleaned).strip(), found[0]


def check_banned(prompt: str, banned_words: Iterable[str]) -> None:
    """Refuse a prompt containing a banned word or phrase (whole words, any case); the word is not echoed."""
    pattern = _banned(tuple(banned_words))
    if pattern is not None and pattern.search(prompt.casefold()):
        raise UserInputError(
            "This prompt contains a word that is not allowed here. Please rephrase it; nothing was charged."
        )


@lru_cache(maxsize=8)  # the operator's list (BANNED_WORDS): compiled once, not once a word at every command
def _banned(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """Any of ``words`` (casefolded) as a whole word or phrase: one pattern for them all."""
    folded = sorted({word.strip().casefold() for word in words} - {""})
    if not folded:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(re.escape(word) for word in folded)})(?!\w)")
