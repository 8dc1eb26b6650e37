//! The API's own description: the OpenAPI 3.1 document and a small page that lists it.
//!
//! The document is generated from the router (`crate::api_routes`): each route is registered
//! with its `#[utoipa::path]` description, so the two cannot drift apart.

use std::sync::LazyLock;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_FRAME_OPTIONS};
use axum::response::{Html, IntoResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The OpenAPI 3.1 document, generated from the router on first use.
static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| crate::openapi_document().to_string());

/// The API's description holds no personal data: caches may keep it a few minutes.
const CACHEABLE: &str = "public, max-age=300";

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = "documentation",
    summary = "This OpenAPI document",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID.")))
    ),
    security(()),
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, CACHEABLE),
        ],
        OPENAPI_JSON.as_str(),
    )
}

/// `GET /docs`: a self-contained page (no external scripts) that renders `/openapi.json`. Its
/// Content-Security-Policy allows only its own inline script and style (by hash), fetching
/// from this origin, and no framing.
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "getDocs",
    tag = "documentation",
    summary = "A page listing the operations of this document",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "A self-contained HTML page that loads `/openapi.json`.", body = String, content_type = "text/html", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID.")))
    ),
    security(()),
)]
pub async fn docs() -> impl IntoResponse {
    (
        [
            (CONTENT_SECURITY_POLICY, DOCS_CSP.as_str()),
            (X_FRAME_OPTIONS, "DENY"),
            (CACHE_CONTROL, CACHEABLE),
        ],
        Html(DOCS_HTML),
    )
}

/// The page's policy, with the hashes of its inline `<script>` and `<style>`.
static DOCS_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash(DOCS_HTML, "script"),
        inline_hash(DOCS_HTML, "style"),
    )
});

/// `sha256-<base64>` of the text inside the first `<tag>…</tag>` of `html`, as a CSP source.
fn inline_hash(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let content = html
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(content, _)| content);
    format!(
        "sha256-{}",
        STANDARD.encode(Sha256::digest(content.as_bytes()))
    )
}

const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Consult API</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 960px; padding: 1rem 1.5rem; color: #1d2330; }
  h1 { margin-bottom: .2rem; }
  #description { white-space: pre-wrap; color: #444; }
  #filter { width: 100%; padding: .45rem .6rem; font: inherit; margin: 1rem 0; box-sizing: border-box; }
  details.op { border: 1px solid #d4d8e0; border-radius: 6px; margin: .45rem 0; }
  details.op > summary { cursor: pointer; padding: .45rem .6rem; list-style: none; display: flex; gap: .7rem; align-items: baseline; }
  details.op[open] > summary { border-bottom: 1px solid #d4d8e0; }
  .method { font: bold 12px/1 ui-monospace, monospace; text-transform: uppercase; padding: .3rem .45rem; border-radius: 4px; color: #fff; min-width: 3.2rem; text-align: center; }
  .get { background: #2f6fd6; } .post { background: #1b8a4b; } .put { background: #b7791f; }
  .patch { background: #8a5cd6; } .delete { background: #c53030; }
  .path { font-family: ui-monospace, monospace; font-weight: 600; }
  .summary { color: #555; }
  .public { font-size: 12px; color: #8a5300; }
  pre { margin: 0; padding: .6rem; overflow: auto; background: #f6f7f9; font-size: 13px; }
  #error { color: #c53030; }
</style>
</head>
<body>
<h1 id="title">Consult API</h1>
<div id="version"></div>
<p id="description"></p>
<p>The full document: <a href="/openapi.json">/openapi.json</a>.</p>
<input id="filter" type="search" placeholder="Filter by method, path or summary" autofocus>
<p id="error"></p>
<div id="ops"></div>
<script>
"use strict";
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function render(doc) {
  document.getElementById("title").textContent = doc.info.title;
  document.getElementById("version").textContent = "version " + doc.info.version + " \u00b7 OpenAPI " + doc.openapi;
  document.getElementById("description").textContent = doc.info.description || "";
  const list = document.getElementById("ops");
  const globalSecurity = doc.security || [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const details = el("details", "op");
      const head = el("summary");
      head.append(el("span", "method " + method, method), el("span", "path", path),
                  el("span", "summary", op.summary || ""));
      const security = op.security || globalSecurity;
      if (security.length === 0) head.append(el("span", "public", "no auth"));
      details.append(head, el("pre", "", JSON.stringify(op, null, 2)));
      details.dataset.search = (method + " " + path + " " + (op.summary || "")).toLowerCase();
      list.append(details);
    }
  }
}
document.getElementById("filter").addEventListener("input", (event) => {
  const words = event.target.value.toLowerCase().split(/\s+/).filter(Boolean);
  for (const node of document.querySelectorAll("details.op")) {
    node.hidden = !words.every((w) => node.dataset.search.includes(w));
  }
});
fetch("/openapi.json")
  .then((response) => {
    if (!response.ok) throw new Error("GET /openapi.json answered " + response.status);
    return response.json();
  })
  .then(render)
  .catch((err) => { document.getElementById("error").textContent = String(err); });
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        crate::openapi_document()
    }

    /// Every `(method, path, operation)` in the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut ops = Vec::new();
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(*method) {
                    ops.push(((*method).to_owned(), path.clone(), op.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1"), "openapi is {version:?}");
    }

    /// The document is generated from the router's route list (`crate::api_routes`), so it
    /// names every route; the API tests check against the running server that every
    /// documented operation is routed and no undocumented method is. Here: no operation is
    /// described twice, and each has its own `operationId`.
    #[test]
    fn each_operation_is_described_once_with_its_own_id() {
        let ops = operations(&document());
        assert!(!ops.is_empty(), "the document describes no operation");
        let mut ids: Vec<&str> = ops
            .iter()
            .map(|(method, path, op)| {
                op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
            })
            .collect();
        ids.sort_unstable();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds repeat");
    }

    #[test]
    fn every_operation_has_a_summary_and_a_success_response() {
        for (method, path, op) in operations(&document()) {
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(!summary.trim().is_empty(), "{method} {path} has no summary");
            let responses = op["responses"].as_object();
            let success = responses.is_some_and(|r| r.keys().any(|status| status.starts_with('2')));
            assert!(success, "{method} {path} has no 2xx response");
        }
    }

    #[test]
    fn path_parameters_are_declared_and_open_routes_need_no_token() {
        let doc = document();
        let parameters = &doc["components"]["parameters"];
        for (method, path, op) in operations(&doc) {
            let declared: Vec<String> = op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| match p["$ref"].as_str() {
                    Some(r) => parameters[r.rsplit('/').next().unwrap_or_default()].clone(),
                    None => p.clone(),
                })
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        declared.iter().any(|d| d == name),
                        "{method} {path} does not declare {name}"
                    );
                }
            }
            let open = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]
                .contains(&path.as_str());
            assert_eq!(
                op.get("security") == Some(&Value::Array(Vec::new())),
                open,
                "{method} {path}: only the open routes have `security: []`"
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(node: &Value, doc: &Value) {
            match node {
                Value::Object(map) => {
                    if let Some(target) = map.get("$ref").and_then(Value::as_str) {
                        let pointer = target.strip_prefix('#').unwrap_or(target);
                        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    #[tokio::test]
    async fn the_handlers_serve_json_and_html() {
        let response = openapi().await.into_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let response = docs().await.into_response();
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap_or_default();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let csp = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(
            DOCS_HTML.matches("<script").count(),
            1,
            "one inline script, hashed"
        );
        assert_eq!(
            DOCS_HTML.matches("<style").count(),
            1,
            "one inline style, hashed"
        );
        assert!(DOCS_HTML.contains("fetch(\"/openapi.json\")"));
        assert!(
            !DOCS_HTML.contains("<script src"),
            "the page must be self-contained"
        );
    }
}
