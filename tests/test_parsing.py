"""The chat parser: Midjourney-style flags, clear refusals, and never anything but our own error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagine_bot.core.chat.parsing import parse_imagine
from imagine_bot.core.errors import ConfigError, UserInputError
from imagine_bot.core.gateway.catalog import SEEDREAM_45, get_model

MODEL = SEEDREAM_45


def parse(text: str, **kw):
    return parse_imagine(text, MODEL, **kw)


def test_defaults_filled_in():
    parsed = parse("a lighthouse at dusk")
    assert parsed.prompt == "a lighthouse at dusk"
    assert parsed.params == {"aspect_ratio": "1:1", "quality": "basic"}


@pytest.mark.parametrize(
    "text",
    [
        "a lighthouse at dusk --ar 16:9 --quality high",
        "a lighthouse at dusk --quality high --ar 16:9",
        "--ar 16:9 a lighthouse at dusk --q high",
        "a lighthouse --aspect=16:9 at dusk --q=HIGH",
        "a lighthouse at dusk —ar 16:9 —quality high",  # em dash from a phone
        "a lighthouse at dusk –ar 16x9 –q high",  # en dash, 16x9
        "a lighthouse at dusk --AR 16/9 --Quality high",
    ],
)
def test_flags_anywhere_any_spelling(text):
    parsed = parse(text)
    assert parsed.params == {"aspect_ratio": "16:9", "quality": "high"}
    assert parsed.prompt in ("a lighthouse at dusk", "a lighthouse at dusk")
    assert "--" not in parsed.prompt and "—" not in parsed.prompt


def test_prompt_keeps_words_between_flags():
    assert parse("a --ar 9:16 tall lighthouse").prompt == "a tall lighthouse"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat --style raw", ["--style", "--ar", "--quality"]),
        ("a cat --ar 5:4", ["5:4", "1:1", "16:9", "9:16"]),
        ("a cat --quality ultra", ["ultra", "basic", "high"]),
        ("a cat --ar", ["needs a value", "1:1"]),
        ("a cat --ar --q high", ["needs a value"]),
        ("--ar 16:9", ["what to draw", "Usage"]),
        ("   ", ["what to draw"]),
        ("a cat --ar 1:1 --aspect 16:9", ["twice"]),
        ("a cat -- dog", ["flag name is missing"]),
    ],
)
def test_refusals_say_what_is_valid(text, expected):
    with pytest.raises(UserInputError) as info:
        parse(text)
    for fragment in expected:
        assert fragment in info.value.user_message


def test_prompt_length_limit():
    with pytest.raises(UserInputError, match="limit is 3000"):
        parse("x" * 3001)
    assert len(parse("x" * 3000).prompt) == 3000


def test_banned_words_refused_without_echo():
    with pytest.raises(UserInputError) as info:
        parse("a Gory battle scene", banned_words=["gory", "blood bath"])
    assert "gory" not in info.value.user_message.lower()
    with pytest.raises(UserInputError):
        parse("a blood   bath".replace("   ", " "), banned_words=["blood bath"])
    # whole words only: "category" does not contain the banned word "gory"
    assert parse("a category of things", banned_words=["gory"]).prompt == "a category of things"


def test_widened_aspect_ratios_from_settings():
    wide = get_model(MODEL.id, ["1:1", "21:9", "4:3"])
    assert parse_imagine("a road --ar 21:9", wide).params["aspect_ratio"] == "21:9"
    with pytest.raises(UserInputError, match="21:9"):
        parse("a road --ar 21:9")  # not in ModKie's default three
    with pytest.raises(ConfigError, match="MODKIE_ASPECT_RATIOS"):
        get_model(MODEL.id, ["5:4"])
    with pytest.raises(ConfigError, match="MODKIE_MODEL"):
        get_model("nope/1")


def test_control_characters_do_not_break_parsing():
    parsed = parse("a\x00 cat\u200b --ar\t16:9")
    assert parsed.params["aspect_ratio"] == "16:9"
    assert "\x00" not in parsed.prompt


flag_words = st.sampled_from(["--ar", "--aspect", "--q", "--quality", "—ar", "–q", "--", "--x", "-ar", "--ar=",
                              "16:9", "1:1", "high", "basic", "9x16", "21:9", "—", "='", "`"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), flag_words), max_size=12).map(" ".join))
def test_any_input_parses_or_raises_our_error(text):
    try:
        parsed = parse(text)
    except UserInputError as error:
        assert error.user_message.strip()
        return
    assert parsed.prompt.strip()
    assert parsed.params["aspect_ratio"] in MODEL.input("aspect_ratio").choices
    assert parsed.params["quality"] in MODEL.input("quality").choices
    assert len(parsed.prompt) <= MODEL.max_prompt_chars
