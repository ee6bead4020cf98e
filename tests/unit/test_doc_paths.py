"""Every file path that the repository's prose names exists in the repository.

Read: Markdown files (link targets; backticked text and code blocks, word by word), comments and
docstrings of Python files, and `#` comments of the shell scripts, Dockerfile, Caddyfile, YAML,
TOML and systemd files. A word counts as a repository path when it has no URL scheme, no
placeholder, glob or variable (`<home>/x`, `*.py`, `$HOME`), does not start with `/` or `~`, and
either begins with a top-level folder of the repository (`core/`, `scripts/test`), or contains a
`/` and ends in a file extension whatever its folder (`api/static/dashboard.js`), or is a bare
file name ending in `.md`, `.py`, `.toml`, `.lock`, `.yml` or `.yaml` (`uv.lock`). It must exist
relative to the repository root or to the folder of the file that names it (a Markdown link only
relative to its folder, as a Markdown viewer reads it). Folders in .gitignore (`.venv/`) are not
part of the repository.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXTENSIONS = frozenset(
    {"md", "py", "toml", "lock", "yml", "yaml", "json", "png", "html", "js", "css", "svg", "service", "plist", "sh"}
)
BARE_EXTENSIONS = frozenset({"md", "py", "toml", "lock", "yml", "yaml"})
HASH_COMMENTED = frozenset({".yml", ".yaml", ".toml", ".service", ".sh", ""})  # "" : Dockerfile, scripts
NOT_A_PATH = re.compile(r"[<>*?{}$\[\]|\\@]|://|^[/~\-!#]|^\.{1,2}$")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"`([^`\n]+)`")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
EDGE = "\"'(),.;:!?`"


@dataclass(frozen=True)
class Ref:
    source: Path
    line: int
    path: str
    link: bool = False  # a Markdown link: relative to the source's folder only

    def __str__(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}: {self.path}"


def ignored_dirs(root: Path) -> set[str]:
    lines = (root / ".gitignore").read_text().splitlines() if (root / ".gitignore").exists() else []
    return {".git", *(line.strip().strip("/") for line in lines if line.strip().endswith("/"))}


def repository(root: Path) -> tuple[set[str], set[str]]:
    """The repository's files and folders, relative to `root`, without ignored folders."""
    files: set[str] = set()
    dirs: set[str] = {"."}
    skip = ignored_dirs(root)
    for here, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in skip]
        rel = Path(here).relative_to(root)
        dirs |= {(rel / d).as_posix() for d in subdirs}
        files |= {(rel / n).as_posix() for n in names if n not in skip}  # a worktree's .git is a file
    return files, dirs


FILES, DIRS = repository(ROOT)
TOP_DIRS = frozenset(d for d in DIRS if "/" not in d and d != ".")


def as_path(word: str) -> str | None:
    """`word` as a repository path, or None when it does not look like one."""
    word = word.strip(EDGE)
    word = re.sub(r":\d+(:\d+)?$", "", word)  # path:line
    if not word or any(c.isspace() for c in word) or NOT_A_PATH.search(word):
        return None
    extension = word.rsplit("/", 1)[-1].rpartition(".")[2] if "." in word.rsplit("/", 1)[-1] else ""
    if "/" in word:
        if word.split("/", 1)[0] in TOP_DIRS or extension in EXTENSIONS:
            return word
        return None
    return word if extension in BARE_EXTENSIONS else None


def _words(text: str) -> Iterator[str]:
    for word in text.split():
        path = as_path(word)
        if path is not None:
            yield path


def markdown_refs(source: Path, text: str) -> Iterator[Ref]:
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield from (Ref(source, number, p) for p in _words(line))
            continue
        for target in LINK.findall(line):
            target = target.split("#", 1)[0]
            if target and not SCHEME.match(target) and not target.startswith("/"):
                yield Ref(source, number, target, link=True)
        for span in SPAN.findall(line):
            yield from (Ref(source, number, p) for p in _words(span))


def python_refs(source: Path, text: str) -> Iterator[Ref]:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield from (Ref(source, token.start[0], p) for p in _words(token.string.lstrip("#")))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = node.body[0] if node.body else None
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                for offset, line in enumerate(doc.value.value.splitlines()):
                    yield from (Ref(source, doc.lineno + offset, p) for p in _words(line))


def hash_comment_refs(source: Path, text: str) -> Iterator[Ref]:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        comment = stripped[1:] if stripped.startswith("#") else line.partition(" # ")[2]
        yield from (Ref(source, number, p) for p in _words(comment))


def refs_of(source: Path, text: str) -> Iterator[Ref]:
    if source.suffix == ".md":
        yield from markdown_refs(source, text)
    elif source.suffix == ".py":
        yield from python_refs(source, text)
    elif source.suffix in HASH_COMMENTED:
        yield from hash_comment_refs(source, text)


def exists(ref: Ref) -> bool:
    bases = [ref.source.parent] if ref.link else [ROOT, ref.source.parent]
    for base in bases:
        target = Path(os.path.normpath(base / ref.path))
        rel = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else None
        if rel is not None and (rel in DIRS if ref.path.endswith("/") else rel in FILES or rel in DIRS):
            return True
    return False


def all_refs() -> list[Ref]:
    refs: list[Ref] = []
    for rel in sorted(FILES):
        source = ROOT / rel
        if source.suffix in (".md", ".py") or (source.suffix in HASH_COMMENTED and source.stat().st_size < 200_000):
            try:
                text = source.read_text()
            except UnicodeDecodeError:
                continue  # not text
            refs += refs_of(source, text)
    return refs


def test_every_path_named_in_prose_exists() -> None:
    refs = all_refs()
    missing = [str(r) for r in refs if not exists(r)]
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)
    # The check reads what it should: a vacuous scan would pass as well.
    named = {(r.source.relative_to(ROOT).as_posix(), r.path) for r in refs}
    assert {
        ("README.md", "docs/api.md"),
        ("README.md", "docs/dashboard.png"),
        ("docs/api.md", "design.md"),
        ("bench/README.md", "roundtrip.py"),
        ("core/connections.py", "docs/design.md"),
    } <= named
    assert len(refs) > 50


FAKE_MD = ROOT / "docs" / "fake.md"
MARKDOWN = """\
See [the contract](api.md), [design](design.md#key-layout), [gone](missing.md) and
[the site](https://example.com/x.md), [an anchor](#errors), `docs/nope.md`, `core/keys.py`,
`reference/reliability.md`, `DESIGN.md`, `README.md`, `bench/roundtrip.py --quick`, `core/`.
Not paths: `application/json`, `/tmp/x.md`, `~/.machine-hub/agent.log`, `<home>/sessions/x.md`,
`tests/*.py`, `$HOME/x.md`, `S:team`, `core.connections.request_client`, `a/b`, `HTTP/1.1`.

```sh
.venv/bin/python bench/roundtrip.py
scripts/nothing --flag
```
"""
PYTHON = '''\
"""Module doc naming docs/design.md and research/hapi-machines.md."""

# the LPUSH ran twice (reference/reliability.md, finding 3); see core/connections.py:12
X = "reference/in-a-string-is-not-prose.md"


def f() -> None:
    """Follows DESIGN.md §1, not `<prefix>:ns:x` or `/etc/hosts`."""
'''


def test_the_check_flags_missing_paths_and_only_those() -> None:
    md = [r for r in refs_of(FAKE_MD, MARKDOWN) if not exists(r)]
    assert [r.path for r in md] == [
        "missing.md",
        "docs/nope.md",
        "reference/reliability.md",
        "DESIGN.md",
        "scripts/nothing",
    ]
    py_source = ROOT / "core" / "fake.py"
    py = [(r.line, r.path) for r in refs_of(py_source, PYTHON) if not exists(r)]
    assert sorted(py) == [(1, "research/hapi-machines.md"), (3, "reference/reliability.md"), (8, "DESIGN.md")]


def test_markdown_links_resolve_from_their_own_folder() -> None:
    # From docs/, `README.md` is ../README.md; as a link it must be written so.
    links = list(refs_of(FAKE_MD, "[readme](README.md) [readme](../README.md)"))
    assert [exists(r) for r in links] == [False, True]
