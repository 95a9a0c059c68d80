"""Links from a page to the repository's own files (`../reports/tensorboard.png`, `../sequences/x.yaml`).

Written relative to the page, as a reader of the files on disk or on a code host follows them; mkdocs
sees only docs/, and `--strict` fails on such a link. This hook checks each one: a target that does not
exist fails the build, naming the page and the link. A file (not a page) is copied into the site at its
repository path and the link pointed there; a folder with an `index.html` (a committed run's report) links
to that; any other folder or Markdown file outside docs/ keeps its text, without the link, on the site.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _targets(page_path: Path, docs: Path, repo: Path, markdown: str):
    """(match, the repository path it names, relative to `repo`) for each link of the page that leaves docs/."""
    for match in LINK.finditer(markdown):
        target = match.group(3).split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue  # an anchor, a URL, mailto:, an absolute path: mkdocs' own checks
        resolved = (page_path.parent / target).resolve()
        if resolved == docs or docs in resolved.parents:
            continue  # a page or file of the docs: mkdocs checks it
        if repo not in resolved.parents:
            raise ValueError(f"{match.group(3)!r} leaves the repository")
        yield match, resolved, resolved.relative_to(repo).as_posix()


def _roots(config) -> tuple[Path, Path]:
    docs = Path(config["docs_dir"]).resolve()
    return docs, Path(config["config_file_path"]).resolve().parent


def on_files(files, config):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    docs, repo = _roots(config)
    for page in list(files.documentation_pages()):
        if page.abs_src_path is None:  # generated (reference.py)
            continue
        path = Path(page.abs_src_path)
        try:
            for match, resolved, relative in _targets(path, docs, repo, path.read_text(encoding="utf-8")):
                if not resolved.exists():
                    raise ValueError(f"{match.group(3)!r}: {relative} does not exist")
                if resolved.is_dir() and (resolved / "index.html").is_file():
                    relative += "/index.html"
                elif resolved.is_dir() or resolved.suffix == ".md":
                    continue
                if files.get_file_from_path(relative) is None:
                    files.append(File(relative, src_dir=str(repo), dest_dir=config["site_dir"],
                                      use_directory_urls=config["use_directory_urls"]))
        except ValueError as err:
            raise PluginError(f"{page.src_uri}: a link to the repository: {err}") from None
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.abs_src_path is None:
        return markdown
    docs, repo = _roots(config)
    here = posixpath.dirname(page.file.src_uri)
    out, last = [], 0
    for match, resolved, relative in _targets(Path(page.file.abs_src_path), docs, repo, markdown):
        if resolved.is_dir() and (resolved / "index.html").is_file():
            relative += "/index.html"
        served = files.get_file_from_path(relative)
        anchor = match.group(3).partition("#")[2]
        if served is None:
            replacement = match.group(2)  # the link's text alone
        else:
            url = posixpath.relpath(relative, here or ".") + (f"#{anchor}" if anchor else "")
            replacement = f"{match.group(1)}[{match.group(2)}]({url})"
        out += [markdown[last:match.start()], replacement]
        last = match.end()
    return "".join(out) + markdown[last:]
