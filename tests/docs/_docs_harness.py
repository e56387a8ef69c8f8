"""Run the fenced blocks of the documentation pages, in page order, in a scratch folder.

The conventions a page follows are in ``tests/docs/README.md``. Sybil lexes the pages (its
Markdown fenced-block lexer) and evaluates them (its ``Document``/``Example`` machinery); this
module adds the evaluators of ``bash``, ``console`` and ``python`` blocks, the ``<!-- ... -->``
markers, and one scratch folder per page.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[2]
#: The pages whose blocks run, relative to the repository root.
PAGE_GLOBS = ("README.md", "docs/*.md", "data/README.md")
#: Languages that are commands and run.
RUNNABLE = ("bash", "console", "python")
#: Other names of runnable languages.
ALIASES = {"sh": "bash", "shell": "bash", "pycon": "python"}
#: Languages that are data, diagrams or formats: nothing to run (a ``file:`` marker writes one).
DATA = ("text", "yaml", "json", "jsonl", "csv", "toml", "ini", "diff", "html")
#: Seconds one block may take before it fails.
BLOCK_TIMEOUT = 300

_MARKER = re.compile(r"<!--\s*([a-z-]+)\s*:\s*(.*?)\s*-->\s*$")
_ANY_MARKER = re.compile(r"<!--\s*(not-runnable|file|docs-fixtures)\b[^>]*-->")
_INFO = re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE)


class DocsError(AssertionError):
    """A page breaks a convention of the harness, or one of its blocks failed."""


@dataclass
class Block:
    """One fenced block of a page and the marker on the line before it."""

    page: str
    line: int
    language: str
    source: str
    not_runnable: str | None = None  # the reason, when marked
    file: str | None = None  # ``<!-- file: NAME -->``: written into the scratch folder

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and self.not_runnable is None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


# -- reading pages ------------------------------------------------------------------


def pages(root: Path = ROOT) -> list[str]:
    """The documentation pages, relative to ``root``, in a stable order."""
    found = []
    for pattern in PAGE_GLOBS:
        found += sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    return found


def _marker_before(text: str, start: int) -> tuple[str, str] | None:
    """The ``<!-- name: value -->`` on the line just before the fence at ``start``, if any."""
    before = text[: max(start - 1, 0)].rsplit("\n", 1)[-1].strip()
    match = _MARKER.match(before)
    return (match.group(1), match.group(2)) if match else None


class _BlockParser:
    """A Sybil parser: every fenced block becomes a region whose ``parsed`` is a Block."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.lexer = RawFencedCodeBlockLexer(info_pattern=_INFO)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexer(document):
            line = document.text.count("\n", 0, region.start) + 1
            language = (region.lexemes["language"].strip().split(" ") or [""])[0]
            language = ALIASES.get(language, language)
            block = Block(self.page, line, language, str(region.lexemes["source"]))
            marker = _marker_before(document.text, region.start)
            if marker and marker[0] == "not-runnable":
                block.not_runnable = marker[1]
            elif marker and marker[0] == "file":
                block.file = marker[1]
            region.parsed = block
            region.evaluator = evaluate
            yield region


def parse(path: Path, page: str) -> Document:
    """The Sybil document of a page, its regions in page order."""
    return Document.parse(str(path), _BlockParser(page))


def blocks(document: Document) -> list[Block]:
    return [example.parsed for example in document.examples()]


def page_fixtures(text: str) -> list[str]:
    """The fixtures a page names: ``<!-- docs-fixtures: a, b -->`` (any number of lines)."""
    names = []
    for match in re.finditer(r"<!--\s*docs-fixtures\s*:\s*(.*?)\s*-->", text):
        names += [n.strip() for n in match.group(1).split(",") if n.strip()]
    return names


def lint(document: Document, page: str) -> list[str]:
    """Every convention a page breaks, one line each (empty when the page is fine)."""
    problems = []
    found = blocks(document)
    for block in found:
        if block.language not in RUNNABLE + DATA:
            problems.append(
                f"{block.where}: a fenced block needs a language, one of "
                f"{', '.join(RUNNABLE + DATA)}; got {block.language!r}"
            )
        if block.not_runnable is not None and not block.not_runnable:
            problems.append(f"{block.where}: `not-runnable` needs a reason")
        if block.not_runnable is not None and block.language not in RUNNABLE:
            problems.append(f"{block.where}: `not-runnable` on a {block.language} block")
        if block.file is not None and block.language not in DATA:
            problems.append(f"{block.where}: `file:` marks a data block, not {block.language}")
    marked = {b.line - 1 for b in found if b.not_runnable is not None or b.file is not None}
    lines = document.text.split("\n")
    for number, text in enumerate(lines, 1):
        match = _ANY_MARKER.match(text.strip())  # a marker stands on a line of its own
        if match and match.group(1) != "docs-fixtures" and number not in marked:
            # a marker whose block moved away would silently stop doing its job
            problems.append(f"{page}:{number}: marker not on the line just before a fence")
    for name in page_fixtures(document.text):
        if name not in FIXTURES:
            problems.append(
                f"{page}: unknown docs fixture {name!r}; known: {', '.join(sorted(FIXTURES))}"
            )
    return problems


# -- fixtures -----------------------------------------------------------------------

#: name -> function(scratch, env, shared) that prepares data in ``scratch`` and sets ``env``.
FIXTURES: dict[str, Callable[[Path, dict, Path], None]] = {}


def docs_fixture(name: str):
    """Register a fixture a page can name in ``<!-- docs-fixtures: NAME -->``."""

    def register(function):
        FIXTURES[name] = function
        return function

    return register


# -- running ------------------------------------------------------------------------


@dataclass
class Page:
    """One page being followed: its scratch folder, environment and Python namespace."""

    name: str
    document: Document
    scratch: Path
    env: dict = field(default_factory=dict)
    done: int = 0  # blocks run so far
    failed: Block | None = None

    @classmethod
    def open(cls, page: str, scratch: Path, shared: Path, root: Path = ROOT) -> Page:
        document = parse(root / page, page)
        problems = lint(document, page)
        if problems:
            raise DocsError("\n".join(problems))
        scratch.mkdir(parents=True, exist_ok=True)
        env = _base_env(scratch, root)
        for name in page_fixtures(document.text):
            FIXTURES[name](scratch, env, shared)
        document.namespace["__page__"] = None  # replaced below; keeps the namespace a dict
        session = cls(page, document, scratch, env)
        document.namespace["__page__"] = session
        return session

    @property
    def examples(self) -> list[Example]:
        return list(self.document.examples())

    def run_through(self, index: int) -> Block:
        """Run the page's blocks up to ``index`` (those not run yet), in order."""
        examples = self.examples
        while self.done <= index:
            example = examples[self.done]
            if self.failed is not None:
                raise _Skipped(f"not run: the earlier block {self.failed.where} failed")
            try:
                example.evaluate()
            except BaseException:
                self.failed = example.parsed
                raise
            finally:
                self.done += 1
        return examples[index].parsed


class _Skipped(Exception):
    """A block not run because an earlier block of its page failed."""


def _base_env(scratch: Path, root: Path) -> dict:
    """The environment of every block: offline, this checkout's featurecache first."""
    bin_dir = scratch / ".venv" / "bin"  # the README's `.venv/bin/featurecache`
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("featurecache", "python"):
        target = bin_dir / name
        command = f'{shlex.quote(sys.executable)} {"-m featurecache " if name == "featurecache" else ""}"$@"'
        target.write_text(f"#!/bin/sh\nexec {command}\n")
        target.chmod(0o755)
    (scratch / "data").mkdir(exist_ok=True)
    python_path = [str(root), os.environ.get("PYTHONPATH", "")]
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
        "FEATURECACHE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(scratch / ".torch"),
        "MPLBACKEND": "Agg",
        "COLUMNS": "100",
    }


def evaluate(example: Example) -> str | None:
    """Sybil's evaluator of every block: dispatch on its language."""
    block: Block = example.parsed
    page: Page = example.namespace["__page__"]
    if block.file is not None:
        (page.scratch / block.file).write_text(block.source)
        return None
    if not block.runs:
        return None
    if block.language == "python" and block.source.lstrip().startswith(">>>"):
        _run_doctest(example, page)
        return None
    if block.language == "python":
        # line numbers in a traceback are the page's (as Sybil's PythonEvaluator pads them)
        code = compile("\n" * block.line + block.source, example.path, "exec", dont_inherit=True)
        with _inside(page):
            exec(code, example.namespace)
        return None
    if block.language == "bash":
        _run_bash(block, page)
        return None
    _run_console(block, page)
    return None


@contextlib.contextmanager
def _inside(page: Page) -> Iterator[None]:
    """In-process Python blocks see the page's folder and environment, then things go back."""
    saved_env = {k: os.environ.get(k) for k in page.env}
    saved_cwd = os.getcwd()
    os.environ.update(page.env)
    os.chdir(page.scratch)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_doctest(example: Example, page: Page) -> None:
    """A ``>>>`` block: each statement's output is checked (``...`` allowed), as doctest does."""
    block: Block = example.parsed
    test = doctest.DocTestParser().get_doctest(
        block.source, example.namespace, block.where, example.path, block.line
    )
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with _inside(page):
        runner.run(test, out=report.write, clear_globs=False)
    if runner.failures:
        raise DocsError(
            f"{block.where}: the example does not print what the page says:\n{report.getvalue()}"
        )


def _shell(script: str, page: Page) -> subprocess.CompletedProcess:
    env = {**os.environ, **page.env}
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=page.scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )


def _run_bash(block: Block, page: Page) -> None:
    done = _shell(block.source, page)
    if done.returncode != 0:
        raise DocsError(
            f"{block.where}: the bash block exited {done.returncode}; its output:\n{done.stdout}"
        )


def console_steps(source: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block (``$ `` starts a command)."""
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in source.splitlines():
        if continued:
            steps[-1] = (steps[-1][0] + "\n" + line, steps[-1][1])
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            steps.append((line[2:], []))
            continued = line.endswith("\\")
        elif steps:
            steps[-1][1].append(line)
        else:
            raise DocsError(f"a console block starts with a command (`$ ...`); got {line!r}")
    return [(command, "\n".join(out)) for command, out in steps]


_CHECKER = doctest.OutputChecker()


def output_matches(expected: str, got: str) -> bool:
    """``got`` as ``expected`` says, where ``...`` stands for any text (trailing spaces ignored)."""

    def tidy(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"

    return _CHECKER.check_output(tidy(expected), tidy(got), doctest.ELLIPSIS)


def _run_console(block: Block, page: Page) -> None:
    for command, expected in console_steps(block.source):
        done = _shell(command, page)
        if done.returncode != 0 and "error:" not in expected:
            raise DocsError(
                f"{block.where}: `{command}` exited {done.returncode}; its output:\n{done.stdout}"
            )
        if not output_matches(expected, done.stdout):
            raise DocsError(
                f"{block.where}: `{command}` printed what the page does not say.\n"
                f"--- the page says:\n{expected}\n--- it printed:\n{done.stdout}"
            )
