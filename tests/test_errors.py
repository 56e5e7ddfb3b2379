"""How a library's exception becomes part of one of sdtrt's one-line messages."""

from sdtrt.errors import first_line


def test_the_first_line_that_says_something():
    assert first_line(RuntimeError("\n  \nbad file\nat line 3")) == "bad file"


def test_an_exception_that_says_nothing_is_named_by_its_type():
    assert first_line(ValueError("   ")) == "ValueError"


def test_a_long_line_keeps_what_failed_and_why():
    message = "running GroupNorm node " + "x" * 500 + " Status Message: gamma must be float"
    line = first_line(RuntimeError(message), 100)
    assert len(line) <= 100
    assert line.startswith("running GroupNorm node") and line.endswith("gamma must be float")
