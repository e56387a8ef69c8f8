"""Every fenced block of README.md, docs/*.md and data/README.md, run as a user follows the page.

One test per runnable block, in page order; each runs the blocks of its page not run yet, so
``-k`` on one block works too. Conventions: ``tests/docs/README.md``.
"""

from __future__ import annotations

import _docs_fixtures  # noqa: F401 (registers the fixtures pages name)
import pytest
from _docs_harness import ROOT, DocsError, Page, _Skipped, blocks, lint, pages, parse
from _docs_harness import RUNNABLE as RUNNABLE_LANGUAGES

PAGES = pages()
DOCUMENTS = {page: parse(ROOT / page, page) for page in PAGES}
RUNNABLE = [
    (page, index, block)
    for page, document in DOCUMENTS.items()
    for index, block in enumerate(blocks(document))
    if block.language in RUNNABLE_LANGUAGES
]


@pytest.fixture(scope="module")
def followed(tmp_path_factory):
    """The pages being followed, each in its own scratch folder, opened on first use."""
    shared = tmp_path_factory.mktemp("docs-shared")
    opened: dict[str, Page] = {}

    def follow(page: str) -> Page:
        if page not in opened:
            scratch = tmp_path_factory.mktemp(page.replace("/", "-").replace(".md", ""))
            opened[page] = Page.open(page, scratch, shared)
        return opened[page]

    return follow


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_run_or_marked_not_runnable_with_its_reason(page):
    assert lint(DOCUMENTS[page], page) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, index, block", RUNNABLE, ids=[f"{b.where}-{b.language}" for _, _, b in RUNNABLE]
)
def test_block(page, index, block, followed):
    if block.not_runnable is not None:
        pytest.skip(f"not-runnable: {block.not_runnable}")
    try:
        followed(page).run_through(index)
    except _Skipped as skipped:
        pytest.skip(str(skipped))
    except DocsError as error:
        pytest.fail(str(error), pytrace=False)
