"""README.md's links resolve: the strict site build (`make docs`) checks the links of
docs/, but the README is not part of the site, and GitHub shows it first."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_LINK = re.compile(r"\]\((?!https?:|mailto:)([^)\s#]*)(?:#([^)\s]+))?\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)


def anchor(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs's toc both make it."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # not in code
    return {anchor(h) for h in _HEADING.findall(text)}


def test_the_anchor_rule_matches_the_docs_headings():
    assert anchor("Set-up: `rotating-pool bootstrap`") == "set-up-rotating-pool-bootstrap"
    assert anchor("Where passwords go: verified TLS, SCRAM only, the admin's own server") == (
        "where-passwords-go-verified-tls-scram-only-the-admins-own-server"
    )


def test_every_relative_link_of_the_readme_resolves():
    broken = []
    for target, fragment in _LINK.findall(README.read_text()):
        path = (ROOT / target).resolve() if target else README
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target}#{fragment}: no such heading")
    assert not broken, broken
    assert len(_LINK.findall(README.read_text())) >= 20
