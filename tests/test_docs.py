"""The documentation lives in the repository: no file points at a spec users do not have, and
every citation of docs/algorithms.md or docs/privacy.md names a section that exists."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("algorithms.md", "privacy.md")
# Spelled in two halves so this file does not match its own check.
OUTSIDE_SPEC = re.compile(r"\b" + "SP" + r"EC\b")
# A citation from anywhere in the tree: docs/algorithms.md#vog, docs/privacy.md, ...
CITATION = re.compile(r"docs/(algorithms|privacy)\.md(?:#([\w-]+))?")
# A relative link inside docs/: [text](privacy.md#the-releases), [text](#vog).
DOC_LINK = re.compile(r"\]\(((?:algorithms|privacy)\.md)?(?:#([\w-]+))?\)")


def tracked_text_files() -> list[Path]:
    """Tracked .py and .md files (outside .venv); every such file on disk if git is missing."""
    try:
        out = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        paths = [ROOT / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        paths = [*ROOT.rglob("*.py"), *ROOT.rglob("*.md")]
    return sorted(p for p in paths
                  if p.is_file() and ".venv" not in p.relative_to(ROOT).parts)


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Explicit `<a id="...">` anchors and heading anchors of a markdown file."""
    text = doc.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    found |= {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}
    return found


def test_helpers_see_what_they_should():
    # The checks below are only as good as these: a spec mention and a citation are found.
    assert OUTSIDE_SPEC.search("see " + "SP" + "EC §2") and OUTSIDE_SPEC.search("../" + "SP" + "EC")
    assert not OUTSIDE_SPEC.search("PriorSpec(name=...)")
    assert CITATION.findall("(docs/algorithms.md#vog).") == [("algorithms", "vog")]
    assert slug("## 2. Data-valuation scores".lstrip("# ")) == "2-data-valuation-scores"
    assert "vog" in anchors(ROOT / "docs" / "algorithms.md")
    assert "the-releases" in anchors(ROOT / "docs" / "privacy.md")
    assert "no-such-section" not in anchors(ROOT / "docs" / "privacy.md")


def test_no_file_cites_a_spec_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in tracked_text_files()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_SPEC.search(line)
    ]
    assert not offenders, "cite docs/algorithms.md#<anchor> instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("doc", DOCS)
def test_doc_exists_with_anchors(doc):
    path = ROOT / "docs" / doc
    assert path.is_file(), f"docs/{doc} is missing"
    assert anchors(path)


def test_every_citation_names_an_existing_section():
    known = {doc: anchors(ROOT / "docs" / doc) for doc in DOCS}
    broken = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8")
        cited = [(f"{name}.md", anchor) for name, anchor in CITATION.findall(text)]
        if path.parent == ROOT / "docs":
            cited += [(target or path.name, anchor) for target, anchor in DOC_LINK.findall(text)
                      if anchor or target]
        for doc, anchor in cited:
            if doc not in known:
                broken.append(f"{path.relative_to(ROOT)}: docs/{doc} does not exist")
            elif anchor and anchor not in known[doc]:
                broken.append(f"{path.relative_to(ROOT)}: docs/{doc}#{anchor} has no such anchor")
    assert not broken, "\n".join(broken)


def test_code_cites_the_algorithms():
    # The point of docs/algorithms.md: the modules that implement it say where it is written.
    citing = {path.relative_to(ROOT).as_posix() for path in tracked_text_files()
              if path.suffix == ".py" and "docs/algorithms.md#" in path.read_text(encoding="utf-8")}
    for module in ("ecos_jax/valuation/vog.py", "ecos_jax/valuation/plis.py",
                   "ecos_jax/ecos/protocol.py", "ecos_jax/privacy/accounting.py",
                   "ecos_jax/coopt/alignment.py"):
        assert module in citing, f"{module} does not cite docs/algorithms.md"


def test_readme_and_architecture_link_the_docs():
    for name in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for doc in DOCS:
            assert f"docs/{doc}" in text, f"{name} does not link docs/{doc}"
