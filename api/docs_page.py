"""GET /docs: a self-contained page that renders /openapi.json (api/openapi.py).

No script, style or font comes from elsewhere, so it works offline and behind any proxy: each
route with its parameters, its statuses with the error bodies the hub sends, and the schemas.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

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
        const body = el("td", {}, media ? typeOf(c[media].schema) : "");
        for (const ex of Object.values((media && c[media].examples) || {}))
          body.append(el("div", {}, el("code", {}, JSON.stringify(ex.value))));
        t.append(el("tr", {}, el("td", {}, code), body, el("td", {}, r.description || "")));
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
