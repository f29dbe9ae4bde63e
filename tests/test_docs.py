"""The guides show commands that exist: every `cxr ...` and `make ...` in README.md and docs/*.md, read from
their code blocks and inline code, is checked against the real command line (cxr/cli.py's parser) and the
Makefile; every relative link points at a file (and a section) that exists; the README stays a front door."""
import glob
import os
import re
import shlex

import pytest

from cxr import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
README_MAX_LINES = 250
MIN_COMMANDS = 20

# How a command shown in the docs starts: the installed script, the module, or make.
_START = re.compile(r"(?:(?:\.venv/bin/)?cxr|(?:\.venv/bin/)?python3? -m cxr|make)(?=\s)")
_SEPARATORS = {"&&", "||", ";", "|", "&"}  # between two commands on one line
_REDIRECTS = re.compile(r"^(?:\d?>>?|\d?>&\d)|^<$")  # a redirection ends what the command takes (<id> does not)


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _shown_lines(markdown: str):
    """Each line of a fenced code block (continuation lines joined) and each inline code span."""
    lines = []
    for block in re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", markdown, flags=re.S | re.M):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    without_blocks = re.sub(r"^\s*```.*?^\s*```", "", markdown, flags=re.S | re.M)
    lines += [span.strip() for span in re.findall(r"`([^`\n]+)`", without_blocks)]
    return lines


def _split(line: str):
    """The line's words (shell quoting honoured; a comment dropped) cut into commands at &&, ||, ;, | and &
    outside brackets (`[--a | --b]` is one usage line)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in a usage line
        words = line.split()
    commands, current, depth = [], [], 0
    for word in words:
        if depth == 0 and word in _SEPARATORS:
            commands.append(current)
            current = []
            continue
        depth = max(0, depth + word.count("[") - word.count("]"))
        current.append(word)
    return [command for command in commands + [current] if command]


def commands_in(markdown: str):
    """The commands shown: every part of a shown line that starts with cxr, .venv/bin/cxr, python -m cxr
    or make, as its words."""
    found = []
    for line in _shown_lines(markdown):
        line = re.sub(r"^\$ ", "", line)
        for words in _split(line):
            text = shlex.join(words)  # quoted again, so that _words reads back the same words
            if _START.match(" ".join(words)):
                found.append(text)
    return found


def _words(command: str):
    """What the command itself takes: its words up to a redirection, brackets and alternatives undone
    (`[--version N | --label stable]` shows --version and --label)."""
    [words] = _split(command)[:1] or [[]]
    kept = []
    for word in words:
        if _REDIRECTS.match(word):
            break
        for part in re.split(r"\|", word.strip("[](){}")):
            part = part.strip("[](){}")
            if part:
                kept.append(part)
    return kept


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def _makefile_targets():
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", _text(os.path.join(ROOT, "Makefile")), flags=re.M))


def _is_placeholder(word: str) -> bool:
    return word.startswith("<") or word.endswith(">") or word in ("...", "COMMAND") or word.isupper()


def problems_of(command: str, parser=None, targets=None):
    """What in `command` the real command line or the Makefile does not have, as sentences."""
    words = _words(command)
    if not words:
        return []
    if words[0] == "make":
        targets = _makefile_targets() if targets is None else targets
        return [f"no Makefile target {word!r}" for word in words[1:]
                if "=" not in word and not word.startswith("-") and word not in targets]
    if words[0].endswith("python") or words[0].endswith("python3"):
        words = words[2:]  # python -m cxr
    names, current = ["cxr"], parser or cli._parser()
    problems = []
    for word in words[1:]:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            if flag not in current._option_string_actions:
                problems.append(f"{' '.join(names)} has no flag {flag}")
            continue
        if word.startswith("-"):
            continue  # a short option or a negative number
        choices = _subparsers(current)
        if not choices:
            continue  # a flag's value or a positional argument
        if _is_placeholder(word):
            return problems  # "cxr <command> --help": any command
        if word not in choices:
            problems.append(f"{' '.join(names)} has no command {word!r} (it has: {', '.join(sorted(choices))})")
            return problems
        current = choices[word]
        names.append(word)
    return problems


def _subcommand(command: str):
    """The cxr subcommand a command runs (None for make)."""
    words = _words(command)
    if words[0] == "make":
        return None
    words = words[3:] if words[0].endswith(("python", "python3")) else words[1:]
    return next((word for word in words if not word.startswith("-")), None)


def _all_commands():
    return [(os.path.relpath(path, ROOT), command) for path in DOCUMENTS for command in commands_in(_text(path))]


def test_every_command_and_flag_the_guides_show_exists():
    parser, targets = cli._parser(), _makefile_targets()
    wrong = [f"{document}: `{command}`: {problem}" for document, command in _all_commands()
             for problem in problems_of(command, parser, targets)]
    assert not wrong, "\n".join(wrong)


def test_the_guides_show_many_commands():
    commands = _all_commands()
    assert len(commands) >= MIN_COMMANDS, commands
    documents = {document for document, _ in commands}
    assert {"README.md", "docs/ingestion.md", "docs/pipeline.md", "docs/kubeflow.md", "docs/serving.md",
            "docs/monitoring.md", "docs/dicom.md"} <= documents, documents
    subcommands = {_subcommand(command) for _, command in commands}
    assert {"demo-data", "build-tfrecords", "run", "predict", "serve", "log-proxy", "kfp", "report", "monitor",
            "feedback", "convert-dicom"} <= subcommands, subcommands


@pytest.mark.parametrize("command, problem", [
    ("cxr run --no-such-flag", "cxr run has no flag --no-such-flag"),
    (".venv/bin/cxr kfp sumbit --package p.yaml", "cxr kfp has no command 'sumbit'"),
    ("cxr trian", "cxr has no command 'trian'"),
    ("make tests", "no Makefile target 'tests'"),
    ("cxr feedback --near-duplicate-max-distance 3", "cxr feedback has no flag --near-duplicate-max-distance"),
    ("cxr serve --model-base-path demo/serving/cxr", "cxr serve has no flag --model-base-path"),
    ("cxr predict x.png [--version N | --lable stable]", "cxr predict has no flag --lable"),
    (".venv/bin/python -m cxr report --metadata_grpc localhost:8080", "cxr report has no flag --metadata_grpc"),
    ("cxr run --verbose", "cxr run has no flag --verbose"),  # cxr's own flag goes before the command
    ("cxr kfp submit --param config='{}' --cron '0 0 3 * * *'", "cxr kfp submit has no flag --cron"),
])
def test_the_checker_finds_an_unknown_command_flag_or_target(command, problem):
    [found] = problems_of(command)
    assert found.startswith(problem), found


def test_the_checker_reads_every_command_of_a_line():
    shown = commands_in("```bash\nmake image IMAGE=r/cxr:1 && docker push r/cxr:1\n"
                        "cxr demo-data --out d && cxr run --no-such-flag   # two\n```\n")
    assert shown == ["make image IMAGE=r/cxr:1", "cxr demo-data --out d", "cxr run --no-such-flag"]
    assert [problems_of(command) for command in shown] == [[], [], ["cxr run has no flag --no-such-flag"]]


def test_the_checker_takes_what_exists():
    for command in ("cxr serve --model_base_path demo/serving/cxr --rest_api_port=0",
                    ".venv/bin/cxr kfp submit --host http://localhost:8080 --param config='{\"a\": 1}'",
                    "python -m cxr --verbose run --set training.epochs=3", "make test XDIST=-n2",
                    "cxr <command> --help", "cxr predict IMAGE... [--version N | --label stable] [--json]",
                    "cxr kfp schedule --name n --cron '0 0 3 * * *' [--no-catchup|--catchup]",
                    ".venv/bin/cxr report --run <the run id submit printed> > report.log 2>&1"):
        assert problems_of(command) == [], command
    assert sorted(commands_in("run `cxr run --preset demo`, then\n```bash\ncxr report \\\n  --out x\n```\n")) == [
        "cxr report --out x", "cxr run --preset demo"]


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: str):
    anchors, seen = set(), {}
    text = re.sub(r"^\s*```.*?^\s*```", "", _text(path), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        anchor = _anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def test_every_relative_link_points_at_a_file_and_section():
    broken = []
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, section = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if not os.path.exists(linked):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target}: no such file")
            elif section and linked.endswith(".md") and section not in _anchors(linked):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target}: no section #{section} in "
                              f"{os.path.relpath(linked, ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_anchor_of_a_heading_is_githubs():
    assert _anchor("make demo (`bench/demo.py`)") == "make-demo-benchdemopy"
    assert _anchor("Where make demo's time goes (profiles, written by hand)") == \
        "where-make-demos-time-goes-profiles-written-by-hand"


def test_the_readme_is_a_front_door():
    lines = _text(os.path.join(ROOT, "README.md")).splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    assert lines[:4] == ["```bash", lines[1], lines[2], "```"] and lines[1].startswith("make demo") and \
        lines[2].startswith("make test")
