"""
The admin page's documents: the HTML of C{/admin/}, its script
C{/admin/page.js} and style C{/admin/page.css} (no inline script or style:
the page's Content-Security-Policy is C{default-src 'self'}), and the small
pages of the sign-in (refused, signed out).  The script polls
C{/admin/v1/overview} and fills the tables with C{textContent} only.

Pure: strings only.
"""

from __future__ import annotations

from html import escape
from typing import Final

__all__ = [
    "CSP",
    "PAGE_CSS",
    "PAGE_HTML",
    "PAGE_JS",
    "POLL_SECONDS",
    "SIGNED_IN_JS",
    "message_page",
]

#: Seconds between two polls of the overview.
POLL_SECONDS: Final = 2

#: The admin page's Content-Security-Policy.
CSP: Final = (
    b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none';"
    b" object-src 'none'"
)

_TABLES: Final = (
    ("connectors", "Connectors", ("id", "group", "status", "host_name", "version",
                                  "last_seen", "last_address", "connections", "streams",
                                  "certificate_expires")),
    ("groups", "Connector groups", ("name", "apps", "connectors")),
    ("apps", "Apps", ("name", "external_url", "group", "pre_authentication")),
    ("sign_ins", "Last sign-ins", ("time", "result", "user", "app", "client_address",
                                   "reason", "detail")),
    ("refusals", "Last refusals", ("time", "result", "user", "app", "client_address",
                                   "reason", "detail")),
    ("audit", "Last audit events", ("time", "event", "actor", "connector_id", "address")),
)  # fmt: skip


def _table(key: str, title: str, columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in columns)
    return (
        f'<section><h2>{escape(title)}</h2><table id="{key}" data-columns="{",".join(columns)}">'
        f"<thead><tr>{head}</tr></thead><tbody></tbody></table></section>"
    )


PAGE_HTML: Final = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    "<title>appproxy admin</title>"
    '<link rel="stylesheet" href="/admin/page.css">'
    '<script src="/admin/page.js" defer></script></head><body>'
    '<header><h1>appproxy admin</h1><p>Signed in as <span id="who"></span>. '
    'Updated <span id="updated">never</span> <span id="problem"></span></p>'
    '<form method="post" action="/admin/sign-out"><button type="submit">Sign out</button>'
    "</form></header>" + "".join(_table(*t) for t in _TABLES) + "</body></html>\n"
).encode("utf-8")

PAGE_CSS: Final = b"""body { font-family: sans-serif; margin: 1em 2em; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; font-size: 90%; }
#problem { color: #a00; }
"""

PAGE_JS: Final = """"use strict";
// The admin page: poll the overview and fill the tables (textContent only).
(function () {
  var POLL_MS = @POLL_MS@;
  function cell(value) {
    var td = document.createElement("td");
    if (Array.isArray(value)) { value = value.join(", "); }
    else if (value !== null && typeof value === "object") { value = JSON.stringify(value); }
    td.textContent = value === null || value === undefined ? "" : String(value);
    return td;
  }
  function fill(table, rows) {
    var columns = table.getAttribute("data-columns").split(",");
    var body = document.createElement("tbody");
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      if (row.id !== undefined) { tr.setAttribute("data-id", String(row.id)); }
      columns.forEach(function (c) { tr.appendChild(cell(row[c])); });
      body.appendChild(tr);
    });
    table.replaceChild(body, table.tBodies[0]);
  }
  function show(data) {
    document.getElementById("who").textContent = data.who || "";
    document.getElementById("updated").textContent = data.time;
    document.getElementById("problem").textContent = "";
    document.querySelectorAll("table[data-columns]").forEach(function (table) {
      fill(table, data[table.id] || []);
    });
  }
  function poll() {
    fetch("/admin/v1/overview", {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/admin/sign-in"); return null; }
        if (!response.ok) { throw new Error("the overview answered " + response.status); }
        return response.json();
      })
      .then(function (data) { if (data) { show(data); } })
      .catch(function (e) { document.getElementById("problem").textContent = String(e); })
      .finally(function () { window.setTimeout(poll, POLL_MS); });
  }
  poll();
})();
""".replace("@POLL_MS@", str(POLL_SECONDS * 1000)).encode()


#: The signed-in page's script: on to the admin page (a navigation of this origin).
SIGNED_IN_JS: Final = b'"use strict";\nwindow.location.replace("/admin/");\n'


def message_page(
    title: str, message: str, link: str | None = None, label: str = "Sign in"
) -> bytes:
    """A small page (refused, signed out), with a link (to sign in again)."""
    more = f'<p><a href="{escape(link)}">{escape(label)}</a></p>' if link else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"
        f"<p>{escape(message)}</p>{more}</body></html>\n"
    ).encode()
