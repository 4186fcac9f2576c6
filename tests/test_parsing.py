"""The chat parser: Midjourney-style flags, clear refusals, and never anything but our own error."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagine_bot.core.chat.parsing import _clean, parse_imagine, whole_number
from imagine_bot.core.errors import ConfigError, NumberRefused, UserInputError
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
    for spaced in ("a blood   bath", "a Blood\tbath", "a blood\n bath"):  # however the words are spaced
        with pytest.raises(UserInputError):
            parse(spaced, banned_words=["blood bath"])
    # whole words only: "category" does not contain the banned word "gory"
    assert parse("a category of things", banned_words=["gory"]).prompt == "a category of things"


def test_each_banned_word_counts_in_a_list_of_many():
    """The list is matched as one pattern: a word that starts another, a word with regex characters, a
    blank entry and the words' case change nothing."""
    words = ["cat", " CATS ", "", "c++", "a.b"]
    for refused in ("two cats", "a cat", "in c++ please", "A.B testing"):
        with pytest.raises(UserInputError):
            parse(refused, banned_words=words)
    for allowed in ("a catalog", "a scatter plot", "in c please", "axb testing"):
        assert parse(allowed, banned_words=words).prompt == allowed
    assert parse("anything", banned_words=["", "  "]).prompt == "anything"


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


def test_an_ascii_prompt_is_cleaned_as_any_other():
    """ASCII text takes a faster path (one regex, issue 22): it must blank exactly what the per-character
    rule blanks (Unicode categories Cc and Cf), every ASCII character tried, alone and beside others."""
    every = "".join(chr(c) for c in range(128))
    by_rule = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in every)
    assert _clean(every) == by_rule
    assert _clean(every + "\u00e9") == by_rule + "\u00e9"  # the slow path, for the same ASCII part
    assert _clean("a\tcat\nx\x7f") == "a cat x "


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


@pytest.mark.parametrize("ratio", ["1" * 5000 + ":1", "16:" + "9" * 5000, "1" * 5 + ":9"])
def test_an_aspect_ratio_of_thousands_of_digits_is_refused_in_plain_words(ratio):
    with pytest.raises(UserInputError) as refused:
        parse(f"a cat --ar {ratio}")
    assert "is not a valid aspect ratio" in refused.value.user_message and len(refused.value.user_message) < 200
    assert parse(f"a cat --ar {'0' * 5000}16:0009").params["aspect_ratio"] == "16:9"  # zeros are no digits


@pytest.mark.parametrize(("raw", "low", "high", "expected"), [
    ("90", 0, 100, 90), ("1,000", 0, 10**9, 1000), ("1_000", 0, 10**9, 1000), (" -50 ", -100, 100, -50),
    ("+7", 0, 10, 7), ("1000000000", 0, 10**9, 10**9), ("-1000000000", -(10**9), 10**9, -(10**9)),
])
def test_whole_numbers_as_typed(raw, low, high, expected):
    assert whole_number(raw, "Credits", low, high) == expected


@pytest.mark.parametrize("raw", ["", "lots", "1e9", "1.5", "0x10", "--", "١٢", "1000000001", "-1", str(10**40),
                                 "9" * 5000, "1,000,000,000,000,000,000,000"])
def test_whole_numbers_out_of_reason_are_refused_in_one_line(raw):
    with pytest.raises(NumberRefused) as refused:
        whole_number(raw, "Credits", 0, 10**9)
    text = refused.value.user_message
    assert text.startswith("Credits: `") and text.endswith("is not a whole number from 0 to 1,000,000,000.")
    assert len(text) < 100 and "\n" not in text
