"""Brand presets: a named prompt template with the house style, for a server or workspace (or, set by an
operator, for every place).

A preset is ``TEMPLATE`` with ``{prompt}`` where the user's words go, optional default ``--ar`` and
``--quality`` (a flag the user types still wins) and optional reference images (brand style images: the
job is then an edit, like any job with references). A channel may have a default preset, used by every
``/imagine`` there unless the user says ``--preset none``.

Pure rules here (names, templates, filling in, reading ``admin preset set``); the rows are
``core.storage.presets``; who may change them is ``ImagineCore``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from imagine_bot.core.chat import messages
from imagine_bot.core.errors import UserInputError

#: where the user's words go in a template
SLOT = "{prompt}"
#: ``--preset none``: no preset, not even the channel's default
NONE = "none"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")
#: the most reference images a preset may carry (the edit model takes at most 14 in all)
MAX_IMAGES = 14

_QUOTES = {'"': '"', "\u201c": "\u201d", "\u201d": "\u201d", "'": "'", "\u2018": "\u2019", "\u2019": "\u2019"}


@dataclass(frozen=True, slots=True)
class Preset:
    #: the place it belongs to (``discord:GUILD``, ``slack:TEAM``) or ``global``
    scope: str
    name: str
    template: str
    #: ``aspect_ratio`` and ``quality`` when the user gives none
    defaults: dict[str, str] = field(default_factory=dict)
    #: reference image URLs (public http(s)): the job becomes an edit of them
    images: tuple[str, ...] = ()
    updated_by: str | None = None
    updated_at: datetime | None = None


def check_name(raw: str) -> str:
    """A preset name: one short word, kept lowercase; ``none`` is taken (it turns presets off)."""
    name = raw.strip().strip("`").lower()
    if not NAME.match(name) or name == NONE:
        raise UserInputError(messages.preset_bad_name(raw))
    return name


def check_template(template: str, max_chars: int) -> str:
    """The template on one line; refused without ``{prompt}`` or when even a one-word prompt would not fit
    the gateway's limit."""
    text = " ".join(template.split())
    if SLOT not in text:
        raise UserInputError(messages.preset_no_slot())
    room = max_chars - len(text.replace(SLOT, ""))
    if room < text.count(SLOT):  # not even one letter of the user's would fit
        raise UserInputError(messages.preset_template_too_long(len(text.replace(SLOT, "")), max_chars))
    return text


def fill(preset: Preset, words: str, max_chars: int) -> str:
    """The prompt a preset makes of the user's words; refused when it is longer than the gateway allows."""
    prompt = preset.template.replace(SLOT, words)
    if len(prompt) > max_chars:
        fixed = len(preset.template.replace(SLOT, ""))
        count = preset.template.count(SLOT)
        raise UserInputError(messages.preset_prompt_too_long(preset.name, len(prompt), max_chars,
                                                             max(0, (max_chars - fixed) // max(1, count))))
    return prompt


@dataclass(frozen=True, slots=True)
class PresetSpec:
    """What ``admin preset set NAME "TEMPLATE" [--ar R] [--quality Q] [--image URL ...] [--global]`` says."""

    name: str
    template: str
    #: the option flags as typed (``--ar 16:9 --quality high``), for the model's own parser to check
    flags: str
    images: tuple[str, ...]
    everywhere: bool


_FLAG_WITH_VALUE = ("--ar", "--aspect", "--aspect-ratio", "--quality", "--q", "--image", "--img")


def read_set(words: list[str]) -> PresetSpec:
    """Read the words after ``admin preset set``. The template may be quoted (straight or curly quotes);
    unquoted, it is every word that is not a flag or a flag's value."""
    usage = 'admin preset set NAME "TEMPLATE with {prompt}" [--ar 16:9] [--quality high] [--image URL ...]'
    if len(words) < 2:
        raise UserInputError(f"Usage: {usage}")
    name = check_name(words[0])
    rest = " ".join(words[1:]).strip()
    template_words: list[str] = []
    if rest and rest[0] in _QUOTES:
        closing = _QUOTES[rest[0]]
        end = rest.find(closing, 1)
        if end < 0:
            raise UserInputError(f"The template's closing quote is missing. Usage: {usage}")
        template_words = rest[1:end].split()
        rest = rest[end + 1:]
    tokens = rest.split()
    flags: list[str] = []
    images: list[str] = []
    everywhere = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag, has_value, value = token.partition("=")
        low = flag.lower().replace("\u2014", "--").replace("\u2013", "--")
        if low == "--global":
            everywhere = True
        elif low in _FLAG_WITH_VALUE:
            if not has_value:
                if i + 1 >= len(tokens):
                    raise UserInputError(f"`{flag}` needs a value. Usage: {usage}")
                i += 1
                value = tokens[i]
            if low in ("--image", "--img"):
                images.append(value.strip("<>\"'`"))
            else:
                flags += [low, value]
        elif low.startswith("--"):
            raise UserInputError(f"`{flag[:30]}` is not an option of a preset. Usage: {usage}")
        else:
            template_words.append(token)
        i += 1
    if not template_words:
        raise UserInputError(f"The preset needs a template. Usage: {usage}")
    for url in images:
        if not url.lower().startswith(("http://", "https://")):
            raise UserInputError(f"`--image` takes the URL of an image (https://...), not `{url[:60]}`.")
    if len(images) > MAX_IMAGES:
        raise UserInputError(f"A preset takes at most {MAX_IMAGES} images.")
    return PresetSpec(name, " ".join(template_words), " ".join(flags), tuple(images), everywhere)
