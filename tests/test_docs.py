"""README.md, BENCHMARKS.md and docs/: links that resolve, a README that stays short, CI's commands kept as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Markdown link targets outside code (fenced blocks and inline spans), minus URLs and in-page anchors."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [t.split("#", 1)[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_link_finder_sees_relative_links_and_skips_urls_anchors_and_code():
    text = "[a](docs/x.md) ![p](p.png#x) [u](https://h.co/y) [s](#sec) `[c](no.md)`\n```\n[d](no2.md)\n```\n"
    assert relative_links(text) == ["docs/x.md", "p.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file(page):
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_readme_stays_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 260, "README.md grew past 260 lines: move the detail into docs/"
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_keeps_the_two_commands_ci_runs():
    """.ci/run executes the first bash block after "## Quick start" and the one after "Run the tests:"."""

    def block_after(line: str) -> str:
        text = (ROOT / "README.md").read_text()
        return re.search(re.escape(line) + r"\n.*?^```bash\n(.*?)^```$", text, flags=re.S | re.M).group(1).strip()

    assert block_after("## Quick start") == (
        'python -m pip install "torch==2.13.0" && python -m pip install -e ".[tests]" && python examples/train.py'
    )
    assert block_after("Run the tests:") == "python -m pytest -q"
