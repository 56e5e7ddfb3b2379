"""The A1111 prompt syntax: parsing into weighted pieces, and laying tokens into chunks."""

import pytest

from sdtrt.errors import InputError
from sdtrt.runtime.prompt_syntax import Fragment, parse_prompt, split_chunks


def _parsed(prompt):
    return [("BREAK" if f.is_break else f.text, f.weight) for f in parse_prompt(prompt)]


# The web UI's own documented examples (its prompt_parser docstring), then the edges.
CASES = {
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    r"\(literal\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ],
    "((a))": [("a", 1.21)],
    "[[a]]": [("a", 1 / 1.21)],
    "([a])": [("a", 1.0)],
    "(a:1.5) b": [("a", 1.5), (" b", 1.0)],
    "(a: 0.8 )": [("a", 0.8)],
    "(a [b:1.5)": [("a ", 1.5), ("b", 1.5 / 1.1)],  # the weight closes the round bracket
    "[a:1.5]": [("a:1.5", 1 / 1.1)],  # a weight needs a round bracket
    "a:1.3) b": [("a:1.3) b", 1.0)],  # nothing open: literal text
    "a) b] c": [("a) b] c", 1.0)],
    "[unbalanced": [("unbalanced", 1 / 1.1)],
    r"a \\ b": [("a \\ b", 1.0)],
    r"a\b": [("ab", 1.0)],  # a lone backslash is dropped
    "": [("", 1.0)],
    "a BREAK b": [("a", 1.0), ("BREAK", 1.0), ("b", 1.0)],
    "BREAK a": [("", 1.0), ("BREAK", 1.0), ("a", 1.0)],
    "a BREAKFAST": [("a BREAKFAST", 1.0)],
    "a break b": [("a break b", 1.0)],
    "(a BREAK b)": [("a", 1.1), ("BREAK", 1.0), ("b", 1.1)],
}


@pytest.mark.parametrize("prompt", CASES)
def test_parses_like_the_web_ui(prompt):
    got = _parsed(prompt)
    expected = CASES[prompt]
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_weight_that_is_not_a_number_is_one_line():
    with pytest.raises(InputError, match=r"prompt weight '1\.2\.3' .* is not a number"):
        parse_prompt("(a:1.2.3)")


def _chunk(ids, weights=None):
    weights = weights or [1.0] * len(ids)
    return split_chunks([Fragment("x", w) for w in weights], [[i] for i in ids], 75, comma_id=9)


def test_long_prompt_fills_chunks_of_75():
    chunks = _chunk(list(range(100, 260)))
    assert [len(c.ids) for c in chunks] == [75, 75, 10]
    assert sum((c.ids for c in chunks), []) == list(range(100, 260))


def test_weights_follow_their_tokens():
    fragments = [Fragment("a", 1.0), Fragment("b", 1.5), Fragment("c", 0.5)]
    chunks = split_chunks(fragments, [[1, 2], [3], [4, 5]], 75, comma_id=None)
    assert chunks[0].ids == [1, 2, 3, 4, 5]
    assert chunks[0].weights == [1.0, 1.0, 1.5, 0.5, 0.5]


def test_break_ends_the_chunk_even_when_empty():
    fragments = [Fragment("", 1.0), Fragment("", is_break=True), Fragment("a", 1.0)]
    chunks = split_chunks(fragments, [[], [], [7, 8]], 75, comma_id=None)
    assert [c.ids for c in chunks] == [[], [7, 8]]


def test_empty_prompt_is_one_empty_chunk():
    assert [c.ids for c in split_chunks([Fragment("")], [[]], 75, comma_id=None)] == [[]]


def test_a_full_chunk_moves_the_words_after_a_recent_comma():
    ids = [100 + i for i in range(70)] + [9] + [200 + i for i in range(10)]  # comma at 70
    chunks = _chunk(ids)
    assert chunks[0].ids == ids[:71]  # up to and including the comma
    assert chunks[1].ids == ids[71:]


def test_a_comma_further_back_than_20_tokens_does_not_move_words():
    ids = [100 + i for i in range(50)] + [9] + [200 + i for i in range(30)]  # comma at 50
    chunks = _chunk(ids)
    assert chunks[0].ids == ids[:75] and chunks[1].ids == ids[75:]


def test_a_comma_that_opens_a_chunk_moves_with_it():
    ids = [100 + i for i in range(75)] + [9, 300]
    chunks = _chunk(ids)
    assert chunks[0].ids == ids[:75] and chunks[1].ids == [9, 300]
