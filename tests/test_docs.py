"""The guides show commands that exist: every `cxr ...` and `make ...` in README.md and docs/*.md, read from
their code blocks and inline code, is checked against the real command line (cxr/cli.py's parser) and the
Makefile; every relative link points at a file that exists; the README stays a front door."""
import glob
import os
import re
import shlex

import pytest

from cxr import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
README_MAX_LINES = 250
_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "<"}


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def commands_in(markdown: str):
    """The command lines shown: each line of a fenced block (continuations joined), and each inline code span,
    that starts with cxr, .venv/bin/cxr, python -m cxr or make."""
    shown = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.S):
        shown += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    without_blocks = re.sub(r"```.*?```", "", markdown, flags=re.S)
    shown += re.findall(r"`([^`\n]+)`", without_blocks)
    found = []
    for line in shown:
        line = re.sub(r"^\$ ", "", line)
        match = re.search(r"(?:^|\s|\()((?:\.venv/bin/)?cxr|python -m cxr|make)\s+[^\s].*", line)
        if match and (match.start(1) == 0 or line[:match.start(1)].strip() in ("", "(")):
            found.append(line[match.start(1):])
    return found


def _tokens(command: str):
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        tokens = command.split()
    kept = []
    for token in tokens:
        if token in _ENDS or token.startswith(("#", ">", "2>")):
            break
        kept.append(token)
    return kept


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def _makefile_targets():
    return set(re.findall(r"^([A-Za-z][\w.-]*):", _text(os.path.join(ROOT, "Makefile")), flags=re.M))


def problems_of(command: str, parser=None, targets=None):
    """What in `command` the real command line or the Makefile does not have, as sentences."""
    tokens = _tokens(command)
    if not tokens:
        return []
    if tokens[0] == "make":
        targets = _makefile_targets() if targets is None else targets
        return [f"no Makefile target {t!r}" for t in tokens[1:] if "=" not in t and not t.startswith("-")
                and t not in targets]
    tokens = tokens[3:] if tokens[:3] == ["python", "-m", "cxr"] else tokens[1:]
    parser = parser or cli._parser()
    known = set(parser._option_string_actions)
    names = ["cxr"]
    current = parser
    for token in tokens:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in known and flag not in current._option_string_actions:
                return [f"{' '.join(names)} has no flag {flag}"]
            continue
        choices = _subparsers(current)
        if not choices:
            continue  # a value or a positional argument
        if token.startswith("<") or token in ("...", "COMMAND"):
            return []  # a placeholder for any command
        if token not in choices:
            if names == ["cxr"] or current is not parser:
                return [f"{' '.join(names)} has no command {token!r} (it has: {', '.join(sorted(choices))})"]
        current = choices[token]
        names.append(token)
        known |= set(current._option_string_actions)
    return []


def _all_commands():
    return [(os.path.relpath(path, ROOT), command) for path in DOCUMENTS for command in commands_in(_text(path))]


def test_every_command_and_flag_the_guides_show_exists():
    parser, targets = cli._parser(), _makefile_targets()
    wrong = [f"{document}: `{command}`: {problem}" for document, command in _all_commands()
             for problem in problems_of(command, parser, targets)]
    assert not wrong, "\n".join(wrong)


def test_the_guides_show_many_commands():
    commands = _all_commands()
    assert len(commands) >= 40, commands
    assert {"README.md", "docs/kubeflow.md", "docs/serving.md", "docs/monitoring.md"} <= {d for d, _ in commands}


@pytest.mark.parametrize("command, problem", [
    ("cxr run --no-such-flag", "cxr run has no flag --no-such-flag"),
    (".venv/bin/cxr kfp sumbit --package p.yaml", "cxr kfp has no command 'sumbit'"),
    ("cxr trian", "cxr has no command 'trian'"),
    ("make tests", "no Makefile target 'tests'"),
    ("cxr feedback --near-duplicate-max-distance 3", "cxr feedback has no flag --near-duplicate-max-distance"),
])
def test_the_checker_finds_an_unknown_command_flag_or_target(command, problem):
    [found] = problems_of(command)
    assert found.startswith(problem), found


def test_the_checker_takes_what_exists():
    for command in ("cxr serve --model_base_path demo/serving/cxr --rest_api_port=0 &",
                    ".venv/bin/cxr kfp submit --host http://localhost:8080 --param config='{}'",
                    "python -m cxr --verbose run --set training.epochs=3", "make test XDIST=-n2",
                    "cxr <command> --help"):
        assert problems_of(command) == [], command
    assert sorted(commands_in("run `cxr run --preset demo`, then\n```bash\ncxr report \\\n  --out x\n```\n")) == [
        "cxr report    --out x", "cxr run --preset demo"]


def test_every_relative_link_points_at_a_file():
    broken = []
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            if not os.path.exists(os.path.join(os.path.dirname(path), target.split("#")[0])):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_door():
    lines = _text(os.path.join(ROOT, "README.md")).splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    assert lines[:4] == ["```bash", lines[1], lines[2], "```"] and lines[1].startswith("make demo") and \
        lines[2].startswith("make test")
