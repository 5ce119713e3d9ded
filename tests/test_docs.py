"""The documentation's links and coverage: fast, pure Python (no kernel runs).

- no markdown file in the repository links outside it (the internal ``../shared/``
  contract is not something a user can open);
- every relative link in README.md and docs/*.md reaches an existing file (and, for a
  link into a markdown file, an existing heading);
- docs/losses.md names every public loss function and module.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import functional

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LOSSES_MD = DOCS / "losses.md"
_SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__"}

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target "title") and ![alt](target); reference definitions [label]: target.
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def markdown_files() -> list[Path]:
    """Every markdown file of the repository (hidden and build folders left out)."""
    found = []
    for path in sorted(ROOT.rglob("*.md")):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info")
               for p in parts):
            continue
        found.append(path)
    return found


def user_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are code)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return _INLINE_LINK.findall(prose) + _REF_DEF.findall(prose)


def is_relative(target: str) -> bool:
    return not _SCHEME.match(target) and not target.startswith("//")


def resolve(md: Path, target: str) -> Path:
    """Where a relative link points (a leading '/' is the repository root, as on GitHub)."""
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    base = ROOT if path.startswith("/") else md.parent
    return (base / path.lstrip("/")).resolve()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = _FENCE.sub("", md.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def outside_links(md: Path) -> list[str]:
    problems = []
    raw = md.read_text(encoding="utf-8")
    if "../shared/" in raw:
        problems.append(f"{md.relative_to(ROOT)} mentions ../shared/ (outside the repository)")
    for target in links(md):
        if target.lower().startswith("file:"):
            problems.append(f"{md.relative_to(ROOT)}: {target} is a local file URL")
            continue
        if not is_relative(target) or target.startswith("#"):
            continue
        where = resolve(md, target)
        if where != ROOT and ROOT not in where.parents:
            problems.append(f"{md.relative_to(ROOT)}: {target} resolves outside the "
                            f"repository ({where})")
    return problems


def broken_links(md: Path) -> list[str]:
    problems = []
    for target in links(md):
        if not is_relative(target):
            continue
        name = md.relative_to(ROOT)
        fragment = target.split("#", 1)[1] if "#" in target else None
        where = md if target.startswith("#") else resolve(md, target)
        if not where.exists():
            problems.append(f"{name}: {target} does not exist")
            continue
        if fragment and where.suffix == ".md" and unquote(fragment) not in anchors(where):
            problems.append(f"{name}: {target} names no heading of {where.relative_to(ROOT)}")
    return problems


def public_losses() -> list[str]:
    """The loss functions and loss modules that contrastive_kernels exports."""
    names = []
    for name in ck.__all__:
        obj = getattr(ck, name)
        if inspect.isfunction(obj) and obj.__module__ == functional.__name__:
            names.append(name)
        elif inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
            names.append(name)
    return names


def test_the_markdown_files_are_found():
    found = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    for required in ("README.md", "csrc/README.md", "docs/losses.md"):
        assert required in found
    assert any(f.startswith("benchmarks/") for f in found)


def test_no_markdown_file_links_outside_the_repository():
    problems = [p for md in markdown_files() for p in outside_links(md)]
    assert not problems, "\n".join(problems)


def test_relative_links_of_the_user_docs_exist():
    assert LOSSES_MD in user_docs()
    problems = [p for md in user_docs() for p in broken_links(md)]
    assert not problems, "\n".join(problems)


def test_readme_links_the_loss_reference():
    targets = [t.split("#", 1)[0] for t in links(ROOT / "README.md")]
    assert "docs/losses.md" in targets
    assert "docs/distributed.md" in targets


def test_every_public_loss_is_documented():
    names = public_losses()
    assert len(names) >= 20  # ten functions and their ten modules
    text = LOSSES_MD.read_text(encoding="utf-8")
    # Named as code: in an inline code span or a fenced block, not merely in prose.
    code = [m.group(0) for m in _FENCE.finditer(text)]
    code += re.findall(r"`([^`]*)`", _FENCE.sub("", text))
    missing = [n for n in names
               if not any(re.search(rf"\b{re.escape(n)}\b", c) for c in code)]
    assert not missing, f"docs/losses.md does not name {missing}"
    sections = {slug(h) for h in _HEADING.findall(_FENCE.sub("", text))}
    no_section = [n for n in names if inspect.isfunction(getattr(ck, n))
                  and n.lower() not in sections]
    assert not no_section, f"docs/losses.md has no section for {no_section}"


@pytest.mark.parametrize("target,inside", [
    ("docs/losses.md", True), ("../shared/SPEC.md", False), ("./x/../README.md", True),
    ("/csrc/README.md", True), ("../../etc/passwd", False)])
def test_resolve_tells_inside_from_outside(target, inside):
    where = resolve(ROOT / "README.md", target)
    assert (ROOT in where.parents) == inside
