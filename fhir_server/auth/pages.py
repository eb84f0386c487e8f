"""Server-rendered sign-in and consent page: plain HTML and CSS, no scripts, no external assets.

Every control is a native form element with a label, so the page works with a keyboard alone (Tab order
follows the document; Enter submits "Allow"). Text from requests is always HTML-escaped.
"""

from __future__ import annotations

from html import escape

# No script runs on these pages; styles are inline; nothing may frame them.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

CSS = """
:root { color-scheme: light dark; --accent: #0b5cad; }
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f3f5f8; color: #1b1f24; }
main { max-width: 28rem; margin: 3rem auto; background: #fff; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0,0,0,.15); }
h1 { font-size: 1.4rem; margin-top: 0; }
label { display: block; font-weight: 600; margin-top: 1rem; }
input[type=text], input[type=password] { width: 100%; box-sizing: border-box; padding: .5rem;
       font: inherit; border: 1px solid #8a94a3; border-radius: 4px; }
ul { padding-left: 1.2rem; }
.error { background: #fdecea; color: #8a1c12; padding: .75rem; border-radius: 4px; }
.actions { display: flex; gap: 1rem; margin-top: 1.5rem; }
button { font: inherit; padding: .6rem 1.2rem; border-radius: 4px; border: 1px solid var(--accent);
         cursor: pointer; }
button.primary { background: var(--accent); color: #fff; }
button.secondary { background: #fff; color: var(--accent); }
:focus-visible { outline: 3px solid #f5a623; outline-offset: 2px; }
@media (prefers-color-scheme: dark) {
  body { background: #14171b; color: #e8eaed; } main { background: #1f2329; }
  button.secondary { background: #1f2329; }
}
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>")


def authorize_page(*, action: str, client_name: str, scopes: list[tuple[str, str]], hidden: list[tuple[str, str]],
                   csrf: str, error: str | None = None, username: str = "") -> str:
    fields = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in hidden)
    items = "".join(f"<li>{escape(text)}</li>" for _, text in scopes) or "<li>No data access</li>"
    alert = f'<p class="error" role="alert" id="error">{escape(error)}</p>' if error else ""
    body = (f"<h1>Sign in to allow {escape(client_name)}</h1>{alert}"
            f'<form method="post" action="{escape(action)}">{fields}'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
            f'<label for="username">Username</label>'
            f'<input type="text" id="username" name="username" value="{escape(username)}" '
            f'autocomplete="username" required autofocus>'
            f'<label for="password">Password</label>'
            f'<input type="password" id="password" name="password" autocomplete="current-password" required>'
            f"<p><strong>{escape(client_name)}</strong> asks to:</p><ul>{items}</ul>"
            f'<div class="actions"><button type="submit" class="primary" name="decision" value="allow" '
            f'id="allow">Allow</button>'
            f'<button type="submit" class="secondary" name="decision" value="deny" id="deny" formnovalidate>'
            f"Deny</button></div></form>")
    return _page("Sign in", body)


def picker_page(*, action: str, client_name: str, hidden: list[tuple[str, str]], csrf: str, ticket: str,
                patients: list[tuple[str, str, str, str]], query: dict[str, str], error: str | None = None) -> str:
    """Step two of a standalone launch for a user who picks a patient: search, then choose one.
    ``patients``: (id, name, birth date, identifiers)."""
    fields = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in hidden)
    alert = f'<p class="error" role="alert" id="error">{escape(error)}</p>' if error else ""

    def box(name: str, text: str, kind: str = "text") -> str:
        return (f'<label for="{name}">{text}</label><input type="{kind}" id="{name}" name="{name}" '
                f'value="{escape(query.get(name, ""))}" autocomplete="off">')

    rows = "".join(
        f'<li><input type="radio" name="patient" id="p-{escape(pid)}" value="{escape(pid)}"'
        f'{" checked" if i == 0 else ""}>'
        f' <label for="p-{escape(pid)}" style="display:inline">{escape(name)}'
        f'{f" &middot; born {escape(born)}" if born else ""}{f" &middot; {escape(ids)}" if ids else ""}</label></li>'
        for i, (pid, name, born, ids) in enumerate(patients))
    listing = (f'<fieldset><legend>Patients you may see</legend><ul id="patients" style="list-style:none;'
               f'padding:0">{rows}</ul></fieldset>') if patients else '<p id="no-patients">No patient found.</p>'
    allow = ('<button type="submit" class="primary" name="decision" value="allow" id="allow">Open this patient'
             '</button>') if patients else ""
    body = (f"<h1>Choose the patient for {escape(client_name)}</h1>{alert}"
            f'<form method="post" action="{escape(action)}">{fields}'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
            f'<input type="hidden" name="pick_ticket" value="{escape(ticket)}">'
            f'{box("q_name", "Name")}{box("q_identifier", "MRN or other identifier")}'
            f'{box("q_birthdate", "Birth date", "date")}'
            f'<div class="actions"><button type="submit" class="secondary" name="decision" value="search" '
            f'id="search" formnovalidate>Search</button></div>'
            f'{listing}<div class="actions">{allow}<button type="submit" class="secondary" name="decision" '
            f'value="deny" id="deny" formnovalidate>Deny</button></div></form>')
    return _page("Choose a patient", body)


def error_page(message: str) -> str:
    return _page("Authorization error", f'<h1>Authorization error</h1><p class="error" role="alert">'
                                        f"{escape(message)}</p>")
