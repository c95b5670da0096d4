"""
Error pages the user sees: HTML by default, JSON for clients that prefer it;
and L{html_page}, the HTML shell of every page the service renders itself.

Pure: no reactor, no I/O; the caller supplies the timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

import attrs

__all__ = [
    "ROBOTS_TXT",
    "VIEWPORT_META",
    "ErrorPage",
    "format_timestamp",
    "html_page",
    "prefers_json",
    "render_error",
    "render_not_found",
]

ROBOTS_TXT: bytes = b"User-agent: *\nDisallow: /\n"

HTML_CONTENT_TYPE = b"text/html; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json"

# Longest host name echoed back in the "Unknown host" page.
_MAX_HOST_SHOWN = 255


@attrs.frozen
class ErrorPage:
    status: int  # e.g. 503
    title: str  # e.g. "No connector available"
    detail: str  # plain text, escaped when rendered
    source: str  # "appproxy service", "connector", "internal application"
    request_id: str
    timestamp: str  # ISO 8601 UTC, supplied by the caller


def format_timestamp(seconds: float) -> str:
    """A POSIX time as an error page shows it: ISO 8601, UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quality(parameters: list[str]) -> float | None:
    """The C{q} parameter of a media range (1 if absent), None if invalid."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return None
            if not 0 <= quality <= 1:
                return None
            return quality
    return 1.0


def prefers_json(accept: bytes | None) -> bool:
    """
    Does the C{Accept} header ask for JSON rather than HTML?

    True when it lists C{application/json} with q > 0 and does not list
    C{text/html} with a higher or equal q.  Wildcards are ignored; media
    ranges with an invalid q are ignored.
    """
    if not accept:
        return False
    json_q = html_q = 0.0
    for media_range in accept.decode("latin-1").split(","):
        media_type, *parameters = media_range.split(";")
        quality = _quality(parameters)
        if quality is None:
            continue
        media_type = media_type.strip().lower()
        if media_type == "application/json":
            json_q = max(json_q, quality)
        elif media_type == "text/html":
            html_q = max(html_q, quality)
    return json_q > 0 and json_q > html_q


_STYLE = """\
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;\
background:#f4f5f7;color:#1f2328}\
main{max-width:36rem;margin:12vh auto;padding:2rem 2.5rem;background:#fff;\
border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
.status{margin:0;font-size:3rem;font-weight:600;color:#8c959f}\
h1{margin:.25rem 0 1rem;font-size:1.5rem}\
p{line-height:1.5}\
dl{margin:1.5rem 0 0;padding-top:1rem;border-top:1px solid #d0d7de;font-size:.85rem;\
color:#57606a;display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}\
dt{font-weight:600}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}"""


#: The viewport line of every page the service renders itself.
VIEWPORT_META = '<meta name="viewport" content="width=device-width, initial-scale=1">'
_ERROR_PAGE_CSP_META = (
    '<meta http-equiv="Content-Security-Policy"'
    " content=\"default-src 'none'; style-src 'unsafe-inline'\">"
)


def html_page(*, title: str, style: str, head: Sequence[str], main: str) -> bytes:
    """
    A complete HTML page of the service's own, encoded as UTF-8.

    @param title: the page title, plain text (escaped here).
    @param style: the inline style sheet.
    @param head: more C{<head>} lines, after C{charset} and C{noindex}.
    @param main: the content of C{<main>}: HTML, each line ending with a
        newline.
    """
    head_lines = "".join(line + "\n" for line in head)
    text = f"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="robots" content="noindex">
{head_lines}<title>{escape(title, quote=True)}</title>
<style>{style}</style>
</head>
<body>
<main>
{main}</main>
</body>
</html>
"""
    return text.encode("utf-8", "replace")


def _render_html(page: ErrorPage) -> bytes:
    status = str(int(page.status))
    main = f"""\
<p class="status">{status}</p>
<h1>{escape(page.title, quote=True)}</h1>
<p>{escape(page.detail, quote=True)}</p>
<dl>
<dt>Source:</dt><dd>{escape(page.source, quote=True)}</dd>
<dt>Request ID:</dt><dd>{escape(page.request_id, quote=True)}</dd>
<dt>Time:</dt><dd>{escape(page.timestamp, quote=True)}</dd>
</dl>
"""
    return html_page(
        title=f"{status} {page.title}",
        style=_STYLE,
        head=[VIEWPORT_META, _ERROR_PAGE_CSP_META],
        main=main,
    )


def _render_json(page: ErrorPage) -> bytes:
    document = {
        "status": int(page.status),
        "error": page.title,
        "detail": page.detail,
        "source": page.source,
        "request_id": page.request_id,
        "time": page.timestamp,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def render_error(page: ErrorPage, accept: bytes | None) -> tuple[bytes, bytes]:
    """
    Render an error page for a request with the given C{Accept} header.

    @return: (content type, body): C{application/json} if the client prefers
        it (see L{prefers_json}), C{text/html; charset=utf-8} otherwise.
    """
    if prefers_json(accept):
        return JSON_CONTENT_TYPE, _render_json(page)
    return HTML_CONTENT_TYPE, _render_html(page)


def render_not_found(
    host: str, request_id: str, timestamp: str, accept: bytes | None
) -> tuple[bytes, bytes]:
    """The 404 page for a request to a host with no published application."""
    if len(host) > _MAX_HOST_SHOWN:
        host = host[:_MAX_HOST_SHOWN] + "\u2026"
    page = ErrorPage(
        status=404,
        title="Unknown host",
        detail=f"No application is published at {host}.",
        source="appproxy service",
        request_id=request_id,
        timestamp=timestamp,
    )
    return render_error(page, accept)
