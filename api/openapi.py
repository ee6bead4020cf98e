"""GET /openapi.json and GET /docs: the API description and a self-contained page that renders it.

Schemas come from the msgspec types that validate request bodies and shape responses
(`msgspec.json.schema_components`), so they cannot drift from the decoders; the paths are
written here by hand, one entry per route, with every status code of the contract.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from api.requests import json_response
from core.events import JobEvent, MachineEvent
from core.schemas import (
    JobPage,
    JobView,
    MachineList,
    MachineStatusList,
    PathsRequest,
    SessionInfo,
    SpawnRequest,
    SpawnResponse,
)


class Error(msgspec.Struct, omit_defaults=True):
    """Every error answer: `error` is fixed per case, `detail` names the field, `code` the cause."""

    error: str
    detail: str | None = None
    code: str | None = None


class PathsResponse(msgspec.Struct):
    exists: dict[str, bool]


class SessionList(msgspec.Struct):
    sessions: list[SessionInfo]


class StopResponse(msgspec.Struct, rename="camel"):
    stopped: bool
    session_id: str
    job_id: str


TYPES: list[Any] = [
    SpawnRequest,
    PathsRequest,
    SpawnResponse,
    PathsResponse,
    MachineList,
    MachineStatusList,
    SessionList,
    StopResponse,
    JobView,
    JobPage,
    MachineEvent,
    JobEvent,
    Error,
]
REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


AUTH = {
    "401": _error("Missing authorization token / Invalid token"),
    "503": _error("Hub not connected (Redis unreachable)"),
}
MACHINE = {"403": _error("Access denied: the machine belongs to another namespace"), "404": _error("Machine not found")}
JOB_FAILED = _error("Failed: offline (code machine_offline), not taken in time (not_started), no answer (timeout)")


def _param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


MACHINE_ID = _param("machine_id", "path", "Machine id", {"type": "string"}, True)
STRING = {"type": "string"}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def paths() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/api/machines": {
            "get": {
                "summary": "Machines of the caller's namespace: online ones, or all with include=offline",
                "security": secured,
                "parameters": [
                    _param(
                        "include",
                        "query",
                        "`offline`: also registered machines without a heartbeat, with online, queueDepth, inFlight",
                        {"type": "string", "enum": ["offline"]},
                    )
                ],
                "responses": {
                    "200": {
                        "description": "Machines sorted by id (MachineStatusList with include=offline)",
                        "content": {
                            "application/json": {"schema": {"oneOf": [_ref("MachineList"), _ref("MachineStatusList")]}}
                        },
                    },
                    "400": _error("Invalid query: unknown include value"),
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/spawn": {
            "post": {
                "summary": "Start a session on the machine (at most once)",
                "security": secured,
                "parameters": [
                    MACHINE_ID,
                    _param(
                        "Idempotency-Key",
                        "header",
                        "1 to 255 printable ASCII characters; same key and body give the same answer for 24 h",
                        STRING,
                    ),
                ],
                "requestBody": _body("SpawnRequest"),
                "responses": {
                    "200": _json("SpawnResponse", "success true, or false with error and code (job failures)"),
                    "400": _error("Invalid body (detail names the field) or Invalid header (Idempotency-Key)"),
                    "413": _error("Request body too large"),
                    "422": _error("Idempotency-Key was already used with a different body"),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/paths/exists": {
            "post": {
                "summary": "Which of these paths exist on the machine",
                "security": secured,
                "parameters": [MACHINE_ID],
                "requestBody": _body("PathsRequest"),
                "responses": {
                    "200": _json("PathsResponse", "One key per distinct trimmed path"),
                    "400": _error("Invalid body"),
                    "413": _error("Request body too large"),
                    "500": JOB_FAILED,
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/sessions": {
            "get": {
                "summary": "Sessions the machine's agent started that still run",
                "security": secured,
                "parameters": [MACHINE_ID],
                "responses": {"200": _json("SessionList", "Sessions"), "500": JOB_FAILED, **MACHINE, **AUTH},
            }
        },
        "/api/machines/{machine_id}/sessions/{session_id}/stop": {
            "post": {
                "summary": "Stop a session (SIGTERM, then SIGKILL after the grace period)",
                "security": secured,
                "parameters": [MACHINE_ID, _param("session_id", "path", "Session id", STRING, True)],
                "responses": {
                    "200": _json("StopResponse", "Stopped"),
                    "404": _error("Machine not found / Session not found"),
                    "403": MACHINE["403"],
                    "500": JOB_FAILED,
                    **AUTH,
                },
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "Recent jobs of the namespace, newest first, paginated",
                "security": secured,
                "parameters": [
                    _param("machineId", "query", "Only this machine's jobs", STRING),
                    _param("state", "query", "Only jobs in this state", {"type": "string", "enum": _enum("JobState")}),
                    _param("kind", "query", "Only jobs of this kind", {"type": "string", "enum": _enum("JobKind")}),
                    _param(
                        "limit", "query", "Page size", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
                    ),
                    _param("cursor", "query", "nextCursor of the previous page", STRING),
                ],
                "responses": {
                    "200": _json("JobPage", "Jobs and the cursor of the next page (null on the last)"),
                    "400": _error("Invalid query (detail names the parameter)"),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "One job's state and result",
                "security": secured,
                "parameters": [_param("job_id", "path", "Job id", STRING, True)],
                "responses": {
                    "200": _json("JobView", "The job"),
                    "403": MACHINE["403"],
                    "404": _error("Job not found"),
                    **AUTH,
                },
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events of the namespace: `event: machine|job`, `id:` stream id, `data:` JSON",
                "description": "Token from the Authorization header or `?token=`. Resume with Last-Event-ID.",
                "security": [{"bearer": []}, {"queryToken": []}],
                "parameters": [
                    _param("Last-Event-ID", "header", "Resume after this event id", STRING),
                    _param("lastEventId", "query", "Same, for clients that cannot set headers", STRING),
                    _param("token", "query", "Bearer token, for EventSource", STRING),
                ],
                "responses": {
                    "200": {
                        "description": "text/event-stream; data is a MachineEvent or a JobEvent",
                        "content": {
                            "text/event-stream": {"schema": {"oneOf": [_ref("MachineEvent"), _ref("JobEvent")]}}
                        },
                    },
                    "400": _error("Invalid header: malformed Last-Event-ID"),
                    "401": AUTH["401"],
                    "503": _error("Hub not connected, too many event streams, or shutting down"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (Bearer MACHINE_HUB_METRICS_TOKEN when that is set)",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": STRING}}},
                    "401": AUTH["401"],
                },
            }
        },
        "/livez": {
            "get": {
                "summary": "Liveness: 200 whenever the process answers",
                "responses": {"200": {"description": "live"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers PING and the hub is not draining",
                "responses": {"200": {"description": '{"ready": true}'}, "503": {"description": "not ready"}},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/docs": {"get": {"summary": "This document, rendered", "responses": {"200": {"description": "HTML"}}}},
    }


_schemas: dict[str, Any] = {}


def _enum(name: str) -> list[str]:
    values: list[str] = components()[name]["enum"]
    return values


def components() -> dict[str, Any]:
    if not _schemas:
        _, schemas = msgspec.json.schema_components(TYPES, ref_template=REF)
        _schemas.update(schemas)
    return _schemas


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "machine-hub",
            "version": "0.1.0",
            "description": "Start AI coding sessions on any of your machines through one HTTP API.",
        },
        "paths": paths(),
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return json_response(spec())


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>machine-hub API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1em 1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:.8em 0;padding:.5em .8em}
.m{display:inline-block;min-width:4.5em;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}code,pre{font:12px ui-monospace,monospace;background:#f5f5f5}
pre{padding:.6em;overflow:auto}table{border-collapse:collapse;margin:.3em 0}
td,th{border:1px solid #e3e3e3;padding:2px 8px;text-align:left;vertical-align:top}
</style></head><body>
<h1 id="title">machine-hub API</h1><p id="desc"></p>
<div id="paths"></div><h2>Schemas</h2><div id="schemas"></div>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function typeOf(s) {
  if (!s) return "";
  if (s.$ref) { const n = s.$ref.split("/").pop(); return el("a", {href: "#schema-" + n}, n); }
  if (s.oneOf || s.anyOf) {
    const span = el("span");
    (s.oneOf || s.anyOf).forEach((x, i) => { if (i) span.append(" | "); span.append(typeOf(x)); });
    return span;
  }
  if (s.enum) return s.enum.map(JSON.stringify).join(" | ");
  if (s.type === "array") { const span = el("span", {}, typeOf(s.items)); span.append("[]"); return span; }
  if (s.type === "object" && s.additionalProperties) {
    const span = el("span", {}, "{string: "); span.append(typeOf(s.additionalProperties), "}"); return span;
  }
  return s.type || "any";
}
fetch("openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("desc").textContent = spec.info.description || "";
  const root = document.getElementById("paths");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("div", {class: "op"}, el("span", {class: "m " + method}, method), el("code", {}, path),
        " ", op.summary || "");
      if (op.description) box.append(el("p", {}, op.description));
      if (op.security) box.append(el("div", {}, "auth: " + op.security.map(s => Object.keys(s)[0]).join(" or ")));
      if (op.parameters && op.parameters.length) {
        const t = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
          el("th", {}, "type"), el("th", {}, "description")));
        for (const p of op.parameters)
          t.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in),
            el("td", {}, typeOf(p.schema)), el("td", {}, p.description || "")));
        box.append(t);
      }
      if (op.requestBody) {
        const c = op.requestBody.content;
        box.append(el("div", {}, "body: ", typeOf(c[Object.keys(c)[0]].schema)));
      }
      const t = el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "body"), el("th", {}, "meaning")));
      for (const [code, r] of Object.entries(op.responses || {})) {
        const c = r.content || {}; const media = Object.keys(c)[0];
        t.append(el("tr", {}, el("td", {}, code), el("td", {}, media ? typeOf(c[media].schema) : ""),
          el("td", {}, r.description || "")));
      }
      box.append(t);
      root.append(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, s] of Object.entries(spec.components.schemas)) {
    const box = el("div", {class: "op", id: "schema-" + name}, el("b", {}, name));
    if (s.description) box.append(el("p", {}, s.description));
    if (s.properties) {
      const req = new Set(s.required || []);
      const t = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "default")));
      for (const [f, fs] of Object.entries(s.properties))
        t.append(el("tr", {}, el("td", {}, f + (req.has(f) ? " *" : "")), el("td", {}, typeOf(fs)),
          el("td", {}, "default" in fs ? JSON.stringify(fs.default) : "")));
      box.append(t);
    } else {
      box.append(el("pre", {}, JSON.stringify(s, null, 2)));
    }
    schemas.append(box);
  }
}).catch(err => { document.getElementById("paths").textContent = "Could not load openapi.json: " + err; });
</script></body></html>
"""


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)
