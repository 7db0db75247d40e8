"""Docs: every relative link of README.md and docs/ reaches its file (and its heading), and the README stays a landing page."""

import re
from pathlib import Path

from conftest import ROOT

README_LIMIT = 15_500  # characters of README.md: the commands and findings; the reference lives in docs/
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]
SOURCES = [*sorted((ROOT / "conf").rglob("*.yaml")), *sorted((ROOT / "aos_bench").rglob("*.py"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)  # fenced code blocks: their brackets are no links
CODE = re.compile(r"`[^`\n]*`")  # inline code spans
LINK = re.compile(r"\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\.md(?:#[\w-]+)?")  # docs/sweeps.md in a comment or a message


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, the repeats numbered -1, -2 as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, outside code."""
    text = FENCE.sub("", page.read_text())
    targets = LINK.findall(CODE.sub("code", text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]  # http(s):, mailto: and the like


def shown(path: Path) -> str:
    """A path as the reader names it: from the project root where it lies inside the project."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken(base: Path, target: str, source: Path) -> str | None:
    """Why `target` (relative to folder `base`) does not resolve, or None when it does."""
    path, _, anchor = target.partition("#")
    file = (base / path).resolve() if path else source
    if not file.exists():
        return f"{shown(source)}: {target}: no file {shown(file)}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{shown(source)}: {target}: no heading with anchor #{anchor} in {shown(file)}"
    return None


def broken_links(page: Path) -> list[str]:
    """Every relative link of a page that reaches no file, or no heading of its file."""
    return [why for target in links(page) if (why := broken(page.parent, target, page))]


def test_every_relative_link_reaches_its_file_and_heading():
    pages = [page for page in PAGES if page.exists()]
    assert links(ROOT / "README.md"), "README.md has no relative links: the link pattern no longer matches"
    assert not [why for page in pages for why in broken_links(page)]


def test_every_docs_path_in_the_configs_and_the_code_exists():
    references = [(source, ref) for source in SOURCES for ref in DOCS_PATH.findall(source.read_text())]
    assert any(source.name == "config.yaml" for source, _ in references)  # conf/config.yaml: see docs/sweeps.md
    assert not [why for source, ref in references if (why := broken(ROOT, ref, source))]


def test_readme_is_a_landing_page_that_maps_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= README_LIMIT, f"README.md has {len(readme)} characters; move reference material into docs/"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unmapped = [doc.name for doc in sorted((ROOT / "docs").glob("*.md")) if doc.resolve() not in linked]
    assert not unmapped, f"README.md's map of docs/ leaves out {unmapped}"


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# The GPU check: `scripts/gpu_check.sh`\n\n## Resume, and force\n## Resume, and force\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#the-gpu-check-scriptsgpu_checksh) [ok](other.md#resume-and-force-1) [web](https://x.org/a.md)\n"
        "`[code](gone.md)`\n```\n[fenced](gone.md)\n```\n[gone](gone.md) [bad anchor](other.md#no-such-heading)\n"
    )
    assert [why.split(": ")[1] for why in broken_links(page)] == ["gone.md", "other.md#no-such-heading"]
