"""The documentation resolves: every ``tritonbasis.*`` name cited in README.md, docs/*.md and
bench/README.md imports (a module) or is an attribute of one; every repository path cited in
backticks exists; every ``--flag`` given to a ``tritonbasis <command>`` exists in that
command's parser (built in-process from tritonbasis.cli). And no file of the repository cites
a file outside it or an issue number: history belongs in git."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
DOCS.append("bench/README.md")

# ``tritonbasis.a.b`` not inside a longer dotted name (torch.ops.tritonbasis.x is the op)
DOTTED = re.compile(r"(?<![\w.])tritonbasis(?:\.[A-Za-z_]\w*)+(?![\w/])")
SPAN = re.compile(r"`([^`\n]+)`")
PATH_SUFFIXES = (".py", ".md", ".sh", ".json", ".toml")
COMMAND = re.compile(r"(?<![\w/.-])tritonbasis ([a-z]+)((?: +[^ `|;&#]+)*)")
# what may stand before a command on its line: nothing, a prompt, env assignments, -m, &&
COMMAND_LEAD = re.compile(r"(?:.*(?:-m|&&|\||;|\$)\s+|(?:\w+=\S*\s+)*)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# Flags of other tools that the docs cite in backticks on their own (every other standalone
# `--flag` must be an option of some tritonbasis command).
OTHER_TOOLS_FLAGS = {
    "--max-restarts": "torchrun",
    "--kernel-name": "ncu",
    "--launch-skip": "ncu",
    "--clock-control": "ncu",
    "--set": "ncu",
    "--benchmark-json": "pytest-benchmark",
    "--no-build-isolation": "pip",
    "--budget": "bench/gpu_session.py",
    "--work": "bench/gpu_session.py",
    "--state": "bench/gpu_session.py",
}

# Files the docs name that a run writes (not in the repository), and where runs write.
OUTPUT_DIRS = ("runs/", "out/")
OUTPUT_FILES = {
    "env.json",
    "summary.json",
    "trace.json",
    "gpu-session-state.json",
    "state.json",
    "plan.json",
    "summary.md",
    "report.json",
    "mode-timings.json",
    "autotune-configs.json",
    "autotune.json",
    "ncu_summary.json",
    "verified.json",
    "config.json",
    "result.json",
}


# --------------------------------------------------------------------------------------------
# resolvers (each returns the problems it finds; tested on bad input below)


def resolve_name(name: str) -> str | None:
    """None if ``name`` (dotted) is a module or an attribute chain under one, else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        try:
            obj = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is not None and not mod.startswith(e.name):
                return f"{name}: importing {mod} fails ({e})"
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{name}: {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{name}: not importable"


def _looks_like_path(span: str) -> bool:
    if any(c in span for c in " <>*{}$~:=()[],'\"…") or span.startswith(("/", ".", "-", "http")):
        return False
    if span.startswith(OUTPUT_DIRS) or span.rsplit("/", 1)[-1] in OUTPUT_FILES:
        return False
    if span.endswith(PATH_SUFFIXES + ("/",)):
        return True
    # a/b is a path when a is a folder of the repository or the package (not "C_b/C_out")
    paths, _ = _tracked()
    head = span.split("/")[0]
    return "/" in span and (head in paths or f"tritonbasis/{head}" in paths)


@cache
def _tracked() -> tuple[set[str], set[str]]:
    """Paths git tracks (and their folders), and their file names."""
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    paths = set(out)
    for p in out:
        parts = p.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return paths, {p.rsplit("/", 1)[-1] for p in out}


def resolve_path(span: str, doc: str) -> str | None:
    """None if the backticked ``span`` is not a path or names a tracked file or folder
    (relative to the repository root, the document's folder, or the package)."""
    if not _looks_like_path(span):
        return None
    paths, names = _tracked()
    p = span.rstrip("/")
    if "/" not in p:  # a file or folder name: somewhere in the repository
        if p in names or any(q.rsplit("/", 1)[-1] == p for q in paths):
            return None
        return f"{doc}: `{span}`: no such file in the repository"
    here = str(Path(doc).parent)
    for base in ("", "" if here == "." else here + "/", "tritonbasis/"):
        if base + p in paths:
            return None
    return f"{doc}: `{span}`: no such path in the repository"


@cache
def _parsers() -> dict[str, set[str]]:
    """command -> its option strings (the top-level ones under "")."""
    from tritonbasis.cli import build_parser

    top = build_parser()
    out = {"": set(top._option_string_actions)}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = set(sub._option_string_actions) | out[""]
    return out


def resolve_command(cmd: str, args: str) -> list[str]:
    """Problems with ``tritonbasis <cmd> <args>``: an unknown command or flag."""
    parsers = _parsers()
    if cmd not in parsers:
        return [f"tritonbasis {cmd}: no such command"]
    return [
        f"tritonbasis {cmd} {flag}: no such flag"
        for flag in FLAG.findall(args)
        if flag not in parsers[cmd]
    ]


def resolve_flag(span: str) -> str | None:
    """A backticked span that starts with a flag (``--plan PATH``): None if some tritonbasis
    command (or a listed other tool) has that flag, else why not."""
    m = FLAG.match(span)
    if m is None or m.start() != 0 or m[0] in OTHER_TOOLS_FLAGS:
        return None
    if any(m[0] in flags for flags in _parsers().values()):
        return None
    return f"`{span}`: no tritonbasis command has {m[0]}"


def doc_problems(doc: str, text: str) -> list[str]:
    problems = [f"{doc}: {p}" for n in DOTTED.findall(text) if (p := resolve_name(n))]
    for span in SPAN.findall(text):
        if (p := resolve_path(span, doc)) is not None:
            problems.append(p)
        if (p := resolve_flag(span)) is not None:
            problems.append(f"{doc}: {p}")
    # commands: in backticks and in fenced code blocks (prose says "tritonbasis needs ...")
    code = SPAN.findall(FENCE.sub("", text))
    code += [line for block in FENCE.findall(text) for line in block.splitlines()]
    for line in code:
        for m in COMMAND.finditer(line):
            if COMMAND_LEAD.fullmatch(line[: m.start()].lstrip()):
                problems += [f"{doc}: {p}" for p in resolve_command(m[1], m[2])]
    return problems


# --------------------------------------------------------------------------------------------
# the documents


def _text(doc: str) -> str:
    """A document's text; ``README.md#Tests`` is README's Tests section, ``README.md`` the rest."""
    path, _, section = doc.partition("#")
    text = (ROOT / path).read_text()
    if path != "README.md":
        return text
    m = re.search(r"^## Tests\n.*?(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has a Tests section"
    return m.group(0) if section else text[: m.start()] + text[m.end() :]


TESTS_SECTION = "README.md#Tests"


@pytest.mark.parametrize("doc", [*DOCS, TESTS_SECTION])
def test_doc_resolves(doc):
    problems = doc_problems(doc, _text(doc))
    assert not problems, "\n".join(sorted(set(problems)))


def test_resolvers_catch_bad_citations():
    assert resolve_name("tritonbasis.nn.layer.BasisConv2d") is None
    assert resolve_name("tritonbasis.conversion.deploy") is None
    assert "has no 'nope'" in resolve_name("tritonbasis.nn.layer.nope")
    assert "not importable" in resolve_name("tritonbasis_nope.x")
    assert resolve_name("tritonbasis.modes") is not None
    assert resolve_path("tritonbasis/op/reference.py", "README.md") is None
    assert resolve_path("op/reference.py", "README.md") is None  # package-relative
    assert resolve_path("tritonbasis/" + "reference.py", "README.md") is not None
    assert resolve_path("nope.md", "README.md") is not None
    assert resolve_path("torch.compile", "README.md") is None  # not a path
    assert resolve_command("search", "--ratio 0.25") == []
    assert resolve_command("search", "--no-such-flag") != []
    assert resolve_command("nope", "") != []
    assert resolve_flag("--plan PATH") is None and resolve_flag("--nope") is not None
    assert _looks_like_path("C_b/C_out") is False and _looks_like_path("runs/x.json") is False
    bad = "See `tritonbasis.nope` and `docs/" + "nope.md`; run `tritonbasis bench --nope`."
    assert len(doc_problems("README.md", bad + " `--nope`")) == 4
    block = "```bash\ntritonbasis search --nope  # x\n```\n"
    assert doc_problems("README.md", block) == [
        "README.md: tritonbasis search --nope: no such flag"
    ]
    assert doc_problems("README.md", "tritonbasis needs torch") == []
    assert doc_problems("README.md", "```python\nimport tritonbasis as tb\n```\n") == []
    run = "```bash\nOMP_NUM_THREADS=2 torchrun -m tritonbasis train --nope\n```\n"
    assert doc_problems("README.md", run) == ["README.md: tritonbasis train --nope: no such flag"]


# --------------------------------------------------------------------------------------------
# no citations outside the repository, no issue numbers

# spelled in pieces so this file does not match itself
OUTSIDE = re.compile(
    "|".join(
        [
            "DESIGN" + r"\.md",
            "DEVELOPERS" + r"\.md",
            "METHOD" + r"\.md",
            r"\.\./" + "shared",
            r"\bissues?\s+#?\d+",
            "/" + "work/",
            "/" + "check/",
        ]
    ),
    re.IGNORECASE,
)
CONFLICT = re.compile("^(?:" + "<" * 7 + " |" + "=" * 7 + "$|" + ">" * 7 + " )")
SCANNED = ("tritonbasis", "kernels", "tools", "bench", "docs", "tests", ".ci")
SUFFIXES = (".py", ".md", ".sh", ".toml", "")


def _scanned_files() -> list[str]:
    paths, _ = _tracked()
    out = []
    for p in sorted(paths):
        f = ROOT / p
        if not f.is_file() or p.startswith("bench/results/"):
            continue
        top = p.split("/")[0]
        if (top in SCANNED or "/" not in p) and f.suffix in SUFFIXES:
            out.append(p)
    return out


def test_no_citation_of_outside_files_or_issue_numbers():
    """Nor a merge-conflict marker left in a file."""
    files = _scanned_files()
    assert "README.md" in files and "tritonbasis/op/reference.py" in files
    problems = []
    for p in files:
        for i, line in enumerate((ROOT / p).read_text(errors="replace").splitlines(), 1):
            if m := OUTSIDE.search(line) or CONFLICT.match(line):
                problems.append(f"{p}:{i}: {m.group(0)!r}")
    assert not problems, "\n".join(problems)


CITED_PATH = re.compile(
    r"(?<![\w/.-])((?:tritonbasis|kernels|tools|bench|docs|tests)/[\w/.-]*\w\.(?:py|md|sh|toml))\b"
)


# Not checked here: README.md (test_doc_resolves), the lab notebook bench/NOTES.md (paths as
# they were when an entry was written), .ci/run (the CI script: its own test tiers).
NOT_CODE = ("README.md", "bench/NOTES.md", ".ci/run")
FICTIONAL = {"tests/a.py"}  # a file name in test data (tests/perf/test_gpu_session.py)


def test_paths_cited_in_code_exist():
    """Repository paths that code and scripts cite (``tests/op/test_ops.py``) exist."""
    paths, _ = _tracked()
    problems = []
    for p in _scanned_files():
        if p in NOT_CODE:
            continue
        for i, line in enumerate((ROOT / p).read_text(errors="replace").splitlines(), 1):
            for cited in set(CITED_PATH.findall(line)) - FICTIONAL:
                here = str(Path(p).parent) + "/"
                if cited not in paths and here + cited not in paths:
                    problems.append(f"{p}:{i}: {cited}")
    assert not problems, "\n".join(problems)


def test_outside_pattern_can_fail():
    for bad in ("see DESIGN" + ".md §2", "(issue" + " 12)", "Issue " + "#3", "/" + "work/x"):
        assert OUTSIDE.search(bad), bad
    assert not OUTSIDE.search("wasted issue slots")
    assert CONFLICT.match("<" * 7 + " HEAD") and not CONFLICT.match("=" * 8)
