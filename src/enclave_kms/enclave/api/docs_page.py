"""`GET /docs`: the API reference as one static HTML page, rendered in the enclave.

FastAPI's default /docs loads Swagger UI's JavaScript and CSS from a CDN: a page served over
attested TLS would run code nobody attested. This page carries no script at all (and says so
in its Content-Security-Policy): every operation with its permission and summary, rendered
from the same OpenAPI document as /openapi.json, which tools can load themselves.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def render(schema: dict[str, Any]) -> str:
    rows = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            rows.append(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>".format(
                    html.escape(method.upper()),
                    html.escape(path),
                    html.escape(str(op.get("x-permission", "—"))),
                    html.escape(str(op.get("summary", ""))),
                )
            )
    title = html.escape(str(schema.get("info", {}).get("title", "API")))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title} API</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td,th{padding:.2em .8em;text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>{title} API</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. "
        'Errors are <code>{"error": {"code", "message"}}</code>.</p>'
        "<table><tr><th>method</th><th>path</th><th>permission</th><th>summary</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def endpoint(openapi: Callable[[], dict[str, Any]]) -> Callable[[Request], HTMLResponse]:
    def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(render(openapi()), headers={"content-security-policy": CSP})

    return docs
