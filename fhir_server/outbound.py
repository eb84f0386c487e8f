"""Where the server may send requests of its own: subscription rest-hook endpoints and Bulk Data ``$import``
sources are URLs that callers choose, so without a check a subscriber or importer could make the server reach
addresses only it can (its database, a cloud metadata service, the admin port on loopback): server-side
request forgery.

Outside ``FHIR_ENVIRONMENT=local`` (the default there keeps development easy), a URL must be http(s) and its
host must resolve only to public addresses, unless the host is listed in ``FHIR_OUTBOUND_ALLOWED_HOSTS``
(e.g. an internal lab gateway). The check runs when the URL is accepted and again on every request (and every
redirect), so a name that later resolves elsewhere is caught too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from fhir_server.config import Settings
from fhir_server.errors import FORBIDDEN, INVALID, FhirError


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, settings: Settings, element: str, *, status: int = 400) -> None:
    """Raise a FhirError (``status``) naming ``element`` unless the server may send a request to ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FhirError(status, INVALID, "Only http(s) URLs with a host are allowed", (element,))
    allowed = {h.lower() for h in settings.outbound_allowed_hosts}
    if not settings.outbound_private_blocked or parts.hostname.lower() in allowed:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FhirError(status, INVALID, f"The host of the URL cannot be resolved ({type(exc).__name__})",
                        (element,)) from None
    if not infos or any(_private(str(info[4][0])) for info in infos):
        raise FhirError(status, FORBIDDEN, "The URL's host is a loopback, private or otherwise non-public address; "
                                        "list it in FHIR_OUTBOUND_ALLOWED_HOSTS to allow it", (element,))


def request_guard(settings: Settings, element: str) -> Callable[[httpx.Request], None]:
    """An httpx request event hook: every request (redirects included) passes ``check_url``."""

    def hook(request: httpx.Request) -> None:
        check_url(str(request.url), settings, element)

    return hook
