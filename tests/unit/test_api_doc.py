"""docs/api.md against the hub itself, so the page cannot drift from the code.

The page's routes must be the hub's routing table and the paths of the /openapi.json it serves;
each route's statuses and error messages must be the spec's (its error examples are made from
the exceptions the routes raise); the errors table must give every exception its status from
api/errors.py; each body table must list the spec schema's fields; each failure code must be one
the code uses. The conventions this parser relies on are the page's last section.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from api.errors import STATUS
from core.errors import RequestError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
ERRORS = "Errors"
SPEC_ROUTES = "Routes"
OTHER_ROUTES = "Routes outside /openapi.json"
BODIES = "Bodies"
CODES = "Failure codes"
PACKAGES = ("api", "core", "machine_agent", "worker", "machine_hub")
ROUTE_HEADING = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) (/\S*)$")
ERROR_MESSAGE = re.compile(r'"error":\s*"([^"]*)"')
CELL_SPLIT = re.compile(r"(?<!\\)\|")

RouteKey = tuple[str, str]  # (method, path template)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Page:
    """The tables of a Markdown page by their (## heading, ### heading), code blocks left out."""

    tables: dict[tuple[str, str], list[Table]] = field(default_factory=lambda: defaultdict(list))
    headings: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]


def parse(text: str) -> Page:
    page = Page()
    h2 = h3 = ""
    table: Table | None = None
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.startswith("|"):
            table = None
        if line.startswith("## "):
            h2, h3 = line[3:].strip(), ""
        elif line.startswith("### "):
            h3 = line[4:].strip()
            page.headings[h2].append(h3)
        elif line.startswith("|"):
            cells = _cells(line)
            if table is None:
                table = Table(header=cells, rows=[])
                page.tables[(h2, h3)].append(table)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                table.rows.append(cells)
    return page


def _one_table(page: Page, section: str, heading: str, first_column: str, problems: list[str]) -> Table | None:
    tables = [t for t in page.tables.get((section, heading), []) if t.header[0] == first_column]
    if len(tables) != 1:
        problems.append(f"{section} / {heading}: expected one table whose first column is {first_column!r}")
        return None
    return tables[0]


def _untick(cell: str) -> str:
    return cell.strip().strip("`").strip()


def _messages(body: str) -> set[str]:
    """The `error`s a body cell names, up to the first ': ' (where a variable reason starts)."""
    return {m.partition(": ")[0] for m in ERROR_MESSAGE.findall(body)}


def _refs(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[1]} if "$ref" in schema else set()
        return found.union(*(_refs(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs(v) for v in schema))
    return set()


def doc_routes(page: Page, section: str) -> dict[RouteKey, list[tuple[str, str]]]:
    """Each route of a section with its (status, body) rows."""
    routes: dict[RouteKey, list[tuple[str, str]]] = {}
    for heading in page.headings.get(section, []):
        match = ROUTE_HEADING.match(heading)
        if match:
            tables = [t for t in page.tables.get((section, heading), []) if t.header[0] == "status"]
            rows = [(r[0], r[1] if len(r) > 1 else "") for t in tables for r in t.rows]
            routes[(match.group(1), match.group(2))] = rows
    return routes


def route_problems(page: Page, spec: dict[str, Any], app_routes: set[RouteKey]) -> list[str]:
    problems: list[str] = []
    documented = doc_routes(page, SPEC_ROUTES)
    others = doc_routes(page, OTHER_ROUTES)
    operations = {(m.upper(), p): op for p, ops in spec["paths"].items() for m, op in ops.items()}
    for key in sorted(operations.keys() - documented.keys()):
        problems.append(f"{' '.join(key)} is in /openapi.json but not under '## {SPEC_ROUTES}'")
    for key in sorted(documented.keys() - operations.keys()):
        problems.append(f"{' '.join(key)} is under '## {SPEC_ROUTES}' but not in /openapi.json")
    for key in sorted(app_routes - documented.keys() - others.keys()):
        problems.append(f"{' '.join(key)} is served by the hub but not documented")
    for key in sorted((documented.keys() | others.keys()) - app_routes):
        problems.append(f"{' '.join(key)} is documented but the hub does not serve it")
    for key, rows in [*documented.items(), *others.items()]:
        if not rows:
            problems.append(f"{' '.join(key)}: no status table")
        if len([t for t in page.tables.get((SPEC_ROUTES, " ".join(key)), []) if t.header[0] == "status"]) > 1:
            problems.append(f"{' '.join(key)}: more than one status table")
        problems += [f"{' '.join(key)}: {s!r} is not a status" for s, _ in rows if not re.fullmatch(r"\d{3}", s)]
    for key in sorted(documented.keys() & operations.keys()):
        problems += _status_problems(" ".join(key), documented[key], operations[key]["responses"])
    return problems


def _status_problems(name: str, rows: list[tuple[str, str]], responses: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    doc_statuses = {s for s, _ in rows}
    for status in sorted(responses.keys() - doc_statuses):
        problems.append(f"{name}: status {status} is in /openapi.json but not in the page")
    for status in sorted(doc_statuses - responses.keys()):
        problems.append(f"{name}: status {status} is in the page but not in /openapi.json")
    for status in sorted(doc_statuses & responses.keys()):
        bodies = [b for s, b in rows if s == status]
        content = responses[status].get("content", {})
        refs = _refs([c.get("schema") for c in content.values()])
        examples = [e["value"] for c in content.values() for e in c.get("examples", {}).values()]
        spec_messages = {e["error"].partition(": ")[0] for e in examples}
        doc_messages = set().union(*(_messages(b) for b in bodies))
        if "Error" in refs and not spec_messages:
            problems.append(f"{name} {status}: /openapi.json gives no example error body")
        for message in sorted(spec_messages - doc_messages):
            problems.append(f"{name} {status}: /openapi.json answers {message!r}, the page does not")
        for message in sorted(doc_messages - spec_messages):
            problems.append(f"{name} {status}: the page answers {message!r}, /openapi.json does not")
        for ref in sorted(refs - {"Error"}):
            if not any(re.search(rf"\b{ref}\b", b) for b in bodies):
                problems.append(f"{name} {status}: the body should name `{ref}`, as /openapi.json does")
    return problems


def body_problems(page: Page, spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    schemas: dict[str, Any] = spec["components"]["schemas"]
    for name in sorted(set(page.headings.get(BODIES, [])) - schemas.keys()):
        problems.append(f"{BODIES} / {name}: no such schema in /openapi.json")
    for name, schema in schemas.items():
        if "enum" in schema:
            table = _one_table(page, BODIES, name, "value", problems)
            if table is not None and {_untick(r[0]) for r in table.rows} != set(schema["enum"]):
                problems.append(f"{BODIES} / {name}: values {schema['enum']} in /openapi.json")
            continue
        table = _one_table(page, BODIES, name, "field", problems)
        if table is None:
            continue
        if "required" not in table.header:
            problems.append(f"{BODIES} / {name}: the table needs a 'required' column")
            continue
        column = table.header.index("required")
        fields = {_untick(r[0]): r[column] for r in table.rows}
        properties = set(schema.get("properties", {}))
        required = set(schema.get("required", []))
        if fields.keys() != properties:
            problems.append(f"{BODIES} / {name}: fields {sorted(fields)}, /openapi.json has {sorted(properties)}")
        for f, mark in fields.items():
            if f in properties and mark not in ("yes", "no"):
                problems.append(f"{BODIES} / {name} / {f}: required must be yes or no")
            elif f in properties and (mark == "yes") != (f in required):
                problems.append(f"{BODIES} / {name} / {f}: required is {'yes' if f in required else 'no'}")
    return problems


@dataclass
class CodeLiterals:
    strings: set[str] = field(default_factory=set)
    codes: set[str] = field(default_factory=set)  # code="..." keywords and SpawnFailure("...") calls


def code_literals() -> CodeLiterals:
    out = CodeLiterals()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out.strings.add(node.value)
                elif isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                    out.codes.add(str(node.value.value))
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "SpawnFailure"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    out.codes.add(str(node.args[0].value))
    return out


def code_problems(page: Page, literals: CodeLiterals) -> list[str]:
    problems: list[str] = []
    table = _one_table(page, CODES, "", "code", problems)
    documented = {_untick(r[0]) for r in table.rows} if table else set()
    for code in sorted(documented - literals.strings):
        problems.append(f"{CODES}: `{code}` appears nowhere in the code")
    for code in sorted(literals.codes - documented):
        problems.append(f"{CODES}: the code uses `{code}`, the page does not list it")
    return problems


def _leaves(cls: type[RequestError]) -> list[type[RequestError]]:
    subclasses = cls.__subclasses__()
    return [leaf for sub in subclasses for leaf in _leaves(sub)] if subclasses else [cls]


def error_table_problems(page: Page, literals: CodeLiterals) -> list[str]:
    """Every exception of core/errors.py with its status from api/errors.py; nothing made up."""
    problems: list[str] = []
    table = _one_table(page, ERRORS, "", "status", problems)
    rows = (
        [(r[0], {_untick(m).partition(": ")[0] for m in re.findall(r"`[^`]+`", r[1])}) for r in table.rows]
        if table
        else []
    )
    known = {cls.message for cls in _leaves(RequestError)}
    for cls in _leaves(RequestError):
        status = next(str(code) for base, code in STATUS.items() if issubclass(cls, base))
        if not any(s == status and cls.message in messages for s, messages in rows):
            problems.append(f"{ERRORS}: no row {status} `{cls.message}` ({cls.__name__})")
    for status, messages in rows:
        for message in sorted(messages - known - literals.strings):
            problems.append(
                f"{ERRORS}: {status} `{message}` is neither an exception's message nor a string of the code"
            )
    return problems


def app_routes(client: TestClient) -> set[RouteKey]:
    routes: set[RouteKey] = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        assert isinstance(route, Route), route
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
        routes |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return routes


def all_problems(text: str, client: TestClient) -> list[str]:
    page = parse(text)
    spec = client.get("/openapi.json").json()
    return [*route_problems(page, spec, app_routes(client)), *body_problems(page, spec)]


def test_the_page_matches_the_hub(client: TestClient) -> None:
    problems = all_problems(DOC.read_text(), client)
    assert not problems, "docs/api.md disagrees with the hub:\n" + "\n".join(problems)


def test_the_failure_codes_are_the_codes_of_the_code() -> None:
    problems = code_problems(parse(DOC.read_text()), code_literals())
    assert not problems, "\n".join(problems)


def test_the_errors_table_is_the_error_table() -> None:
    problems = error_table_problems(parse(DOC.read_text()), code_literals())
    assert not problems, "\n".join(problems)


SPAWN = "### POST /api/machines/{machine_id}/spawn"
INVALID_TOKEN = '| 401 | `{"error": "Invalid token"}` | |\n'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (SPAWN, "### POST /api/machines/{id}/spawn", "POST /api/machines/{id}/spawn is under"),
        (SPAWN, "### GET /api/machines/{machine_id}/spawn", "is served by the hub but not documented"),
        ("### GET /dashboard/\n", "### GET /dashboard/old\n", "GET /dashboard/ is served by the hub"),
        (
            INVALID_TOKEN + '| 403 | `{"error": "Access denied"}` | another namespace\'s machine |',
            INVALID_TOKEN + '| 409 | `{"error": "Conflict"}` | |',
            "status 409 is in the page but not in /openapi.json",
        ),
        ('| 422 | `{"error": "Idempotency-Key', '| 400 | `{"error": "Idempotency-Key', "status 422 is in /openapi"),
        ('"error": "Too many event streams"', '"error": "Too many streams"', "the page answers 'Too many streams'"),
        ("| 200 | `SpawnResponse` |", "| 200 | `SpawnResult` |", "the body should name `SpawnResponse`"),
        ("| `reuseWorktree` | boolean | no |", "| `reuse` | boolean | no |", "SpawnRequest: fields"),
        ("| `directory` | string | yes |", "| `directory` | string | no |", "SpawnRequest / directory: required"),
        ("| `expired` |", "| `lost` |", "JobState: values"),
        ("### StopResponse", "### StopAnswer", "StopAnswer: no such schema"),
    ],
)
def test_the_comparison_catches_drift(client: TestClient, old: str, new: str, expected: str) -> None:
    text = DOC.read_text()
    assert old in text
    problems = all_problems(text.replace(old, new, 1), client)
    assert any(expected in p for p in problems), problems


def test_a_missing_error_row_is_caught(client: TestClient) -> None:
    text = DOC.read_text()
    head, spawn, tail = text.partition(SPAWN)
    assert INVALID_TOKEN in tail
    problems = all_problems(head + spawn + tail.replace(INVALID_TOKEN, "", 1), client)
    assert f"{SPAWN[4:]} 401: /openapi.json answers 'Invalid token', the page does not" in problems


def test_the_code_check_catches_unknown_and_unlisted_codes() -> None:
    text = DOC.read_text().replace("| `worktree_failed` |", "| `worktree_broke` |")
    problems = code_problems(parse(text), code_literals())
    assert "Failure codes: `worktree_broke` appears nowhere in the code" in problems
    assert "Failure codes: the code uses `worktree_failed`, the page does not list it" in problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("| 422 | `Idempotency-Key", "| 409 | `Idempotency-Key", "no row 422 `Idempotency-Key was already used"),
        ("| 500 | `Internal error` |", "| 500 | `Internal failure` |", "500 `Internal failure` is neither"),
        ("`Failed to list sessions: <reason>`, ", "", "no row 500 `Failed to list sessions` (SessionsFailed)"),
    ],
)
def test_the_errors_table_check_catches_drift(old: str, new: str, expected: str) -> None:
    text = DOC.read_text()
    assert old in text
    problems = error_table_problems(parse(text.replace(old, new, 1)), code_literals())
    assert any(expected in p for p in problems), problems
