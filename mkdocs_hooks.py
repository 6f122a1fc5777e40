"""MkDocs hook: pages may link to repository files outside docs/.

A page links to, say, ``../examples/fargate_sidecar/run-example.png`` so that
the link works on GitHub. MkDocs only knows files under docs/, so this hook
copies each such target into the site under ``_repo/`` and points the link
there. Markdown targets are copied as ``.md.txt`` (served as text, not built as
pages: they were written for GitHub). A target that does not exist is left
alone, and the strict build reports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# A Markdown link or image target: ](path) or ](path#anchor), relative only.
_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(#[^)\s]*)?\)")
_COPIES = "_repo"


def _outside_target(page_path: Path, link: str, docs: Path) -> Path | None:
    """The repository file a page's link names, if it lies outside docs/."""
    target = (page_path.parent / link).resolve()
    root = docs.parent
    if not target.is_file() or docs in target.parents or root not in target.parents:
        return None
    return target.relative_to(root)


def _copy_uri(relative: Path) -> str:
    suffix = ".txt" if relative.suffix == ".md" else ""
    return f"{_COPIES}/{relative.as_posix()}{suffix}"


def on_files(files: Files, config: Any) -> Files:
    """Add every repository file a page links to as a static file of the site."""
    docs = Path(config["docs_dir"]).resolve()
    wanted: set[Path] = set()
    for file in files.documentation_pages():
        page_path = Path(file.abs_src_path or "")
        for link, _anchor in _LINK.findall(page_path.read_text(encoding="utf-8")):
            relative = _outside_target(page_path, link, docs)
            if relative is not None:
                wanted.add(relative)
    for relative in sorted(wanted):
        files.append(
            File.generated(config, _copy_uri(relative), abs_src_path=str(docs.parent / relative))
        )
    return files


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    """Point links to files outside docs/ at their copies in the site."""
    docs = Path(config["docs_dir"]).resolve()
    page_path = Path(page.file.abs_src_path or "")

    def rewrite(match: re.Match[str]) -> str:
        link, anchor = match.group(1), match.group(2) or ""
        relative = _outside_target(page_path, link, docs)
        if relative is None:
            return match.group(0)
        copy = docs / _copy_uri(relative)
        return f"]({os.path.relpath(copy, page_path.parent)}{anchor})"

    return _LINK.sub(rewrite, markdown)
