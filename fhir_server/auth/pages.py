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
                   csrf: str, error: str | None = None, username: str = "", ask_patient: bool = False) -> str:
    fields = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in hidden)
    items = "".join(f"<li>{escape(text)}</li>" for _, text in scopes) or "<li>No data access</li>"
    alert = f'<p class="error" role="alert" id="error">{escape(error)}</p>' if error else ""
    patient = ('<label for="patient">Patient id</label>'
               '<input type="text" id="patient" name="patient" autocomplete="off" required '
               'aria-describedby="patient-help">'
               '<small id="patient-help">The Patient this app will work with.</small>') if ask_patient else ""
    body = (f"<h1>Sign in to allow {escape(client_name)}</h1>{alert}"
            f'<form method="post" action="{escape(action)}">{fields}'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
            f'<label for="username">Username</label>'
            f'<input type="text" id="username" name="username" value="{escape(username)}" '
            f'autocomplete="username" required autofocus>'
            f'<label for="password">Password</label>'
            f'<input type="password" id="password" name="password" autocomplete="current-password" required>'
            f"{patient}"
            f"<p><strong>{escape(client_name)}</strong> asks to:</p><ul>{items}</ul>"
            f'<div class="actions"><button type="submit" class="primary" name="decision" value="allow" '
            f'id="allow">Allow</button>'
            f'<button type="submit" class="secondary" name="decision" value="deny" id="deny" formnovalidate>'
            f"Deny</button></div></form>")
    return _page("Sign in", body)


def error_page(message: str) -> str:
    return _page("Authorization error", f'<h1>Authorization error</h1><p class="error" role="alert">'
                                        f"{escape(message)}</p>")
