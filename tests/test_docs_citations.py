"""Every citation of the project's documentation resolves inside the repository.

The code cites the digests of the upstream methods as ``docs/upstream/<page>.md §<number>`` (or ``A8``-style section
names for the workflow anchors), and other pages as plain ``docs/<path>.md``. This test reads cfx/, workflow/,
tests/, docs/ and README.md as they are when it runs and checks that each cited file exists and that each cited
section has a heading in it. It also checks that no citation of the old out-of-repository pages (``reference/`` and
a page name) and no section cited without its page is left in cfx/, workflow/ or tests/. Pure text: no torch.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".txt", ".json", ".toml", ".cfg"}
CODE_DIRS = ("cfx", "workflow", "tests")

SECTION = r"§\s?\d+(?:\.\d+)*(?:\s?[–-]\s?\d+(?:\.\d+)*)?"
# docs/upstream/<page>.md, then an optional first section (a §-number, or a lettered one such as A8) and more
# §-numbers joined by commas, semicolons or "and": "docs/upstream/dime_ace.md §1.1, §1.5 and §2.7"
UPSTREAM = re.compile(rf"docs/upstream/([\w-]+\.md)"
                      rf"((?:\s?(?:{SECTION}|[A-Z]\d+\b))?(?:(?:\s?,|\s?;|\sand)\s?{SECTION})*)")
PLAIN = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.md\b")
NUMBER = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s?[–-]\s?(\d+(?:\.\d+)*))?|\b([A-Z]\d+)\b")
HEADING = re.compile(r"^#{1,6}\s+(?:§\s?)?([A-Z]?\d+(?:\.\d+)*)\.?(?=\s|$)")
OLD_PAGE = re.compile("reference" + r"/[\w-]+\.md")
OLD_BARE = re.compile("reference" + r"\s§")
BARE_PAGE = re.compile(r"(?<![\w/])(?:dime_ace|ldce_gcd_svce|anchors)\.md\s§")


def _text_files(*tops: str) -> list[Path]:
    files = []
    for top in tops:
        path = ROOT / top
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                      and (p.suffix in TEXT_SUFFIXES or p.name == "Snakefile")]
    return files


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    for number, line in enumerate(text.splitlines(), start=1):
        yield f"{path.relative_to(ROOT)}:{number}", line


def _headings(page: Path) -> set[str]:
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            found.add(match.group(1))
    return found


def test_cited_docs_pages_and_sections_exist():
    headings: dict[str, set[str]] = {}
    problems, n_citations = [], 0
    for path in _text_files(*CODE_DIRS, "docs", "README.md"):
        for where, line in _lines(path):
            for match in PLAIN.finditer(line):
                if not (ROOT / match.group(0)).is_file():
                    problems.append(f"{where}: {match.group(0)} does not exist")
            for match in UPSTREAM.finditer(line):
                n_citations += 1
                page = ROOT / "docs" / "upstream" / match.group(1)
                if not page.is_file():
                    continue  # reported as a missing file above
                known = headings.setdefault(match.group(1), _headings(page))
                for section in NUMBER.finditer(match.group(2)):
                    for cited in filter(None, section.groups()):
                        if cited not in known:
                            problems.append(f"{where}: {match.group(0).strip()} cites {cited}, which has no heading "
                                            f"in docs/upstream/{match.group(1)}")
    assert n_citations > 0, "no docs/upstream citation found: the scan is broken"
    assert not problems, "\n".join(problems)


def test_no_citation_of_the_old_out_of_repository_pages():
    problems = []
    for path in _text_files(*CODE_DIRS):
        for where, line in _lines(path):
            for pattern, what in ((OLD_PAGE, "an out-of-repository page"), (OLD_BARE, "a page-less section"),
                                  (BARE_PAGE, "a page without its docs/upstream/ folder")):
                for match in pattern.finditer(line):
                    problems.append(f"{where}: {match.group(0)!r} cites {what}")
    assert not problems, "\n".join(problems)


def test_the_upstream_pages_number_their_sections():
    # the pages the code cites, with a few sections that must keep their numbers
    expected = {"dime_ace.md": {"1.1", "1.3", "2.3", "2.7", "3.3", "4.4", "5", "6.2", "7"},
                "ldce_gcd_svce.md": {"1.3", "1.4", "2.3", "2.10", "3.2", "3.4"},
                "anchors.md": {"A8", "C1"}}
    for page, sections in expected.items():
        assert sections <= _headings(ROOT / "docs" / "upstream" / page), page
