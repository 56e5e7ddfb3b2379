"""The README and docs/ stay true to the CLI: every option an `sdtrt` command line shows exists
in that command, every relative link and anchor resolves, and every preset is listed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from sdtrt.cli import app
from sdtrt.export.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# A command line starts with `sdtrt` as a word of its own (not `sdtrt.runtime` or `sdtrt[export]`).
COMMAND = re.compile(r"sdtrt(?=[ \t]+\S)")
LONG_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SHORT_FLAG = re.compile(r"(?<![\w-])-[a-zA-Z](?![\w-])")


# typer may carry its own copy of click: commands are recognised by what they have, not their class.
def _walk(command: Any, path: tuple[str, ...]) -> dict[tuple[str, ...], Any]:
    found = {path: command}
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found.update(_walk(sub, (*path, name)))
    return found


COMMANDS = _walk(typer.main.get_command(app), ())


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


ALL_OPTIONS = set().union(*(_options(command) for command in COMMANDS.values()))


def _code(text: str) -> tuple[list[str], list[str]]:
    """(command lines from fenced blocks, inline code spans from the prose)."""
    lines: list[str] = []
    for match in FENCE.finditer(text):
        for raw in match.group(2).splitlines():
            if lines and (raw[:1] in (" ", "\t") or lines[-1].endswith("\\")):
                lines[-1] = lines[-1].rstrip("\\") + " " + raw.strip()
            else:
                lines.append(raw)
    prose = FENCE.sub("", text)
    return lines, [" ".join(span.split()) for span in INLINE.findall(prose)]


def _invocations(code: str) -> list[str]:
    """Each `sdtrt ...` command in a line of code: comments cut off, chained commands apart."""
    code = re.sub(r"(^|\s)#.*", "", code)
    found = []
    for segment in re.split(r"&&|\|\||;|\|(?![\w-])", code):
        words = segment.strip().removeprefix("$ ")
        if COMMAND.match(words):
            found.append(words[len("sdtrt") :])
    return found


def _command_path(words: list[str]) -> tuple[tuple[str, ...] | None, list[str], str]:
    """The (sub)command the words after `sdtrt` name (None for a placeholder such as COMMAND),
    the options given to `sdtrt` itself before it, and the words left."""
    index = 0
    while index < len(words) and words[index].startswith("-"):
        index += 1
    own = words[:index]
    path: tuple[str, ...] = ()
    while index < len(words) and not words[index].startswith("-"):
        word = words[index]
        if (*path, word) in COMMANDS:
            path = (*path, word)
            index += 1
        elif path == () and word.isupper():
            return None, own, " ".join(words[index + 1 :])
        elif path == ():
            raise ValueError(f"`sdtrt {word}` is not a command")
        else:
            break
    return path, own, " ".join(words[index:])


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a synopsis
        return text.split()


def _shown_flags() -> list[tuple[str, str, tuple[str, ...] | None, str]]:
    """(file, command line, command path, flag) for every flag an sdtrt command line shows."""
    shown: list[tuple[str, str, tuple[str, ...] | None, str]] = []
    for doc in DOCS:
        lines, spans = _code(doc.read_text(encoding="utf-8"))
        for code in [*lines, *spans]:
            for invocation in _invocations(code):
                try:
                    path, own, rest = _command_path(_words(invocation))
                except ValueError as error:
                    shown.append((doc.name, invocation.strip(), ("?",), str(error)))
                    continue
                for flag in LONG_FLAG.findall(rest) + SHORT_FLAG.findall(rest):
                    shown.append((doc.name, invocation.strip(), path, flag))
                for flag in own:
                    shown.append((doc.name, invocation.strip(), (), flag))
    return shown


def test_docs_show_sdtrt_commands():
    """The check below has something to check: the docs' command lines are found."""
    shown = _shown_flags()
    assert len(shown) > 100
    assert ("build",) in {path for _, _, path, _ in shown}
    assert ("debug", "compare") in {path for _, _, path, _ in shown}


def test_every_flag_shown_exists_in_its_command():
    wrong = []
    for name, line, path, flag in _shown_flags():
        if path == ("?",):
            wrong.append(f"{name}: {flag}: {line}")
            continue
        known = ALL_OPTIONS if path is None else _options(COMMANDS[path])
        if flag not in known:
            where = "any command" if path is None else "sdtrt " + " ".join(path)
            wrong.append(f"{name}: {flag} is not an option of {where}: sdtrt {line}")
    assert not wrong, "\n".join(wrong)


def test_every_flag_named_in_prose_exists():
    """A span such as `--strength S` outside a command line names an option of some command."""
    wrong = []
    for doc in DOCS:
        _, spans = _code(doc.read_text(encoding="utf-8"))
        for span in spans:
            if span.startswith("--"):
                flag = LONG_FLAG.match(span)
                if flag is None or flag.group() not in ALL_OPTIONS:
                    wrong.append(f"{doc.name}: `{span}`")
    assert not wrong, "\n".join(wrong)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but hyphens dropped, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slugs_follow_github():
    assert slug("What has run on a GPU, and what has not") == (
        "what-has-run-on-a-gpu-and-what-has-not"
    )
    assert slug("Against torch and other runtimes: --compare") == (
        "against-torch-and-other-runtimes---compare"
    )
    assert slug("`sdtrt bench`") == "sdtrt-bench"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.name}:\n" + "\n".join(broken)


def test_docs_link_every_docs_page():
    """Every page in docs/ is reachable from the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for target in LINK.findall(readme)}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, pages - linked


def _argument_help(path: tuple[str, ...], name: str) -> str:
    for param in COMMANDS[path].params:
        if param.param_type_name == "argument" and param.name == name:
            return getattr(param, "help", None) or ""
    raise AssertionError(f"sdtrt {' '.join(path)} has no argument {name}")


@pytest.mark.parametrize("path, argument", [(("build",), "model"), (("preset",), "name")])
def test_the_cli_lists_every_preset(path, argument):
    text = _argument_help(path, argument)
    missing = [name for name in PRESETS if not re.search(rf"(?<![\w-]){name}(?![\w-])", text)]
    assert not missing, f"sdtrt {path[0]} {argument.upper()}'s help lacks {missing}"


def test_the_docs_list_every_preset():
    for doc in (ROOT / "README.md", ROOT / "docs" / "models.md"):
        text = doc.read_text(encoding="utf-8")
        missing = [name for name in PRESETS if f"`{name}`" not in text]
        assert not missing, f"{doc.name} lacks the presets {missing}"
