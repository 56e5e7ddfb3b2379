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


def test_an_error_keeps_its_cause(tmp_path):
    from sdtrt.engine.manifest import read_manifest
    from sdtrt.errors import ArtifactError

    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    try:
        read_manifest(tmp_path)
    except ArtifactError as error:
        assert isinstance(error.__cause__, ValueError)  # json's own error, for a debugger
    else:
        raise AssertionError("a damaged manifest was read")


def test_the_debug_switch_shows_the_traceback_behind_the_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sdtrt.cli import app
    from sdtrt.errors import DEBUG_ENV

    # "0", not deleted: monkeypatch then restores the variable's absence at the end, though
    # `--debug` below sets it in this process's environment.
    monkeypatch.setenv(DEBUG_ENV, "0")
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    plain = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert plain.exit_code == 1 and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" not in plain.stderr
    for switch in (["--debug"], []):
        if not switch:
            monkeypatch.setenv(DEBUG_ENV, "1")
        shown = CliRunner().invoke(app, [*switch, "info", str(tmp_path)])
        assert shown.exit_code == 1 and "Traceback" in shown.stderr
        assert "JSONDecodeError" in shown.stderr  # the cause, not only the one line
        assert shown.stderr.strip().splitlines()[-1].startswith("error: ")
        monkeypatch.delenv(DEBUG_ENV, raising=False)
