"""The harness of the docs tests fails on what it must fail on (a test of the tests)."""

from __future__ import annotations

import pytest
from _docs_harness import DocsError, Page, _Skipped, lint, output_matches, parse

FENCE = "```"


def _page(tmp_path, text: str) -> Page:
    root = tmp_path / "repo"
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(text)
    return Page.open("README.md", tmp_path / "scratch", tmp_path / "shared", root=root)


def _run_all(page: Page) -> None:
    for index in range(len(page.examples)):
        page.run_through(index)


def test_a_broken_bash_block_fails_with_its_page_line_and_output(tmp_path):
    page = _page(
        tmp_path, f"# t\n\n{FENCE}bash\necho fine\nfeaturecache no-such-command\n{FENCE}\n"
    )
    with pytest.raises(
        DocsError,
        match=r"README.md:3: the bash block exited 2; its output:\nfine\n.*invalid choice",
    ):
        _run_all(page)


def test_a_block_after_a_failed_one_is_not_run(tmp_path):
    text = f"{FENCE}bash\nfalse\n{FENCE}\n\n{FENCE}bash\ntouch ran\n{FENCE}\n"
    page = _page(tmp_path, text)
    with pytest.raises(DocsError):
        page.run_through(0)
    with pytest.raises(_Skipped, match="the earlier block README.md:1 failed"):
        page.run_through(1)
    assert not (page.scratch / "ran").exists()


def test_console_output_must_be_what_the_command_prints(tmp_path):
    good = f"{FENCE}console\n$ echo 'data: 2 classes, 30 images'\ndata: ... classes, 30 images\n{FENCE}\n"
    _run_all(_page(tmp_path, good))
    bad = f"{FENCE}console\n$ echo 'data: 2 classes, 30 images'\ndata: 2 classes, 31 images\n{FENCE}\n"
    with pytest.raises(DocsError, match="printed what the page does not say"):
        _run_all(_page(tmp_path / "b", bad))


def test_console_commands_must_succeed_unless_the_page_quotes_an_error(tmp_path):
    failing = f"{FENCE}console\n$ featurecache ls missing.h5\n...\n{FENCE}\n"
    with pytest.raises(DocsError, match="exited 2"):
        _run_all(_page(tmp_path, failing))
    quoted = f"{FENCE}console\n$ featurecache ls missing.h5\nfeaturecache: error: ...\n{FENCE}\n"
    _run_all(_page(tmp_path / "q", quoted))


def test_python_blocks_share_one_namespace_and_raise_what_they_raise(tmp_path):
    text = f"{FENCE}python\nx = 41\n{FENCE}\n\n{FENCE}python\nassert x == 42, 'x is 41'\n{FENCE}\n"
    page = _page(tmp_path, text)
    page.run_through(0)
    with pytest.raises(AssertionError, match="x is 41"):
        page.run_through(1)


def test_a_file_block_is_written_for_later_blocks(tmp_path):
    text = (
        f"<!-- file: grid.yaml -->\n{FENCE}yaml\nlogreg:\n  C: [1]\n{FENCE}\n\n"
        f"{FENCE}bash\ngrep -q 'C: \\[1\\]' grid.yaml\n{FENCE}\n"
    )
    _run_all(_page(tmp_path, text))


def test_not_runnable_blocks_are_not_run(tmp_path):
    text = f"<!-- not-runnable: needs a GPU -->\n{FENCE}bash\nfalse\n{FENCE}\n"
    page = _page(tmp_path, text)
    assert page.examples[0].parsed.not_runnable == "needs a GPU"
    _run_all(page)


@pytest.mark.parametrize(
    "text, problem",
    [
        (f"{FENCE}\nls\n{FENCE}\n", "README.md:1: a fenced block needs a language"),
        (f"{FENCE}rust\nls\n{FENCE}\n", "got 'rust'"),
        (
            f"<!-- not-runnable:  -->\n{FENCE}bash\nls\n{FENCE}\n",
            "README.md:2: `not-runnable` needs a reason",
        ),
        (
            f"<!-- not-runnable: GPU -->\n\n{FENCE}bash\nls\n{FENCE}\n",
            "README.md:1: marker not on the line just before a fence",
        ),
        (
            f"<!-- not-runnable: GPU -->\n{FENCE}text\nls\n{FENCE}\n",
            "`not-runnable` on a text block",
        ),
        ("<!-- docs-fixtures: photos, nope -->\n", "unknown docs fixture 'nope'"),
        (
            f"a\n\n<!-- not-runnable: x -->\n{FENCE}text\nls\n{FENCE}\n",
            "README.md:4: `not-runnable` on a text",
        ),
    ],
)
def test_a_page_that_breaks_a_convention_is_refused(tmp_path, text, problem):
    import _docs_fixtures  # noqa: F401 (the known fixtures)

    (tmp_path / "README.md").write_text(text)
    problems = lint(parse(tmp_path / "README.md", "README.md"), "README.md")
    assert any(problem in p for p in problems), problems
    with pytest.raises(DocsError):
        _page(tmp_path, text)


def test_ellipsis_matches_inside_and_across_lines():
    assert output_matches("a ... c\n...\nz", "a b c\nx\ny\nz\n")
    assert not output_matches("a ... c", "a b d")


def test_a_marker_quoted_in_prose_is_not_a_marker(tmp_path):
    (tmp_path / "README.md").write_text("Mark it `<!-- not-runnable: REASON -->`.\n")
    assert lint(parse(tmp_path / "README.md", "README.md"), "README.md") == []
