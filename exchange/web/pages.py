"""Rendering console pages: the jinja2 environment, the context every page gets, and small formatters."""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from exchange.errors import UnknownPeer
from exchange.http.appkeys import SERVICE
from exchange.web.session import CSRF_FIELD, Session, csrf_token

TEMPLATES = Path(__file__).parent / "templates"
JINJA: web.AppKey[jinja2.Environment] = web.AppKey("console_jinja", jinja2.Environment)

# FIRST TLP 2.0: the label's colour (on black) and what it allows.
TLP = {
    "CLEAR": ("#FFFFFF", "Recipients may share this with the world; there is no limit on disclosure."),
    "GREEN": ("#33FF00", "Limited disclosure: recipients may share this within their community, not publicly."),
    "AMBER": (
        "#FFC000",
        "Limited disclosure: recipients may share this only on a need-to-know basis within their "
        "organisation and its clients.",
    ),
    "AMBER+STRICT": ("#FFC000", "Limited disclosure: recipients may share this only within their organisation."),
    "RED": ("#FF2B2B", "For the eyes and ears of individual recipients only; no further disclosure."),
}
AGENCIES = {
    "customs": "Customs",
    "aviation-security": "Aviation security",
    "police": "Police",
    "international": "International organisation",
}
KINDS = {
    "alert": "Alert",
    "threat-bulletin": "Threat bulletin",
    "seizure-report": "Seizure report",
    "feedback": "Feedback",
    "request-for-information": "Request for information",
}
NAV = {
    "contact-point": [("channels", "Channels"), ("compose", "Compose"), ("search", "Search"), ("peers", "Partners")],
    "auditor": [
        ("audit", "Audit log"),
        ("audit/checkpoints", "Checkpoints"),
        ("audit/trace", "Trace"),
        ("channels", "Channels"),
        ("peers", "Partners"),
    ],
    "admin": [
        ("admin", "Administration"),
        ("channels", "Channels"),
        ("audit/checkpoints", "Checkpoints"),
        ("peers", "Partners"),
    ],
}


# Characters that change the direction of the text around them (ALM, LRM, RLM, the embeddings and
# overrides LRE RLE PDF LRO RLO, the isolates LRI RLI FSI PDI): "evil\u202efdp.exe" shows as
# "evilexe.pdf". The console shows user text in elements that isolate it (<bdi>, dir="auto"), which
# keeps it from reordering what is around it; a file name, whose own order is the claim, has them
# replaced, and so do places that cannot isolate (the window title).
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
REPLACEMENT = "\ufffd"


def without_bidi(value: object) -> str:
    """Text with its direction controls made visible as U+FFFD."""
    return BIDI_CONTROLS.sub(REPLACEMENT, str(value))


def file_name(value: object) -> str:
    """An attachment's name as the console shows and downloads it: no direction controls, no
    control characters, no line or paragraph separators, no path."""
    name = str(value).rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "".join(
        REPLACEMENT if BIDI_CONTROLS.match(c) or unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") else c
        for c in name
    )


def when(value: str | None) -> str:
    """An RFC 3339 UTC timestamp as people read it."""
    if not value:
        return "—"
    return value.replace("T", " ").split(".")[0].rstrip("Z") + " UTC"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template is HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["short"] = lambda value: str(value)[:12]
    env.filters["without_bidi"] = without_bidi
    env.filters["file_name"] = file_name
    env.globals.update(TLP=TLP, AGENCIES=AGENCIES, KINDS=KINDS, CSRF_FIELD=CSRF_FIELD)
    return env


def render(
    request: web.Request, template: str, *, status: int = 200, session: Session | None = None, **context: Any
) -> web.Response:
    """A page of the console, with the node, the signed-in user and their navigation."""
    service = request.app.get(SERVICE)
    me = service.fed.node(service.me) if service is not None else None

    def node(node_id: str) -> Any:
        """A roster node by id, for names and agencies (None if the roster has no such node)."""
        if service is None:
            return None
        try:
            return service.fed.node(node_id)
        except UnknownPeer:
            return None

    role = session.user.role if session else None
    html = (
        request.app[JINJA]
        .get_template(template)
        .render(
            me=me,
            node=node,
            session=session,
            user=session.user if session else None,
            csrf=csrf_token(session.secret) if session else "",
            nav=NAV.get(role or "", []),
            path=request.path,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.Response:
    """See Other: after a POST the browser GETs the result, so a reload never posts twice.

    Anything but printable ASCII in `location` (a line break from a form field, a name in another
    script) is percent-encoded: a header cannot carry it, and aiohttp would drop the connection.
    """
    safe = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>\\^`{|}')
    return web.Response(status=303, headers={"Location": urllib.parse.quote(location, safe=safe)})


__all__ = [
    "AGENCIES",
    "BIDI_CONTROLS",
    "JINJA",
    "KINDS",
    "TLP",
    "environment",
    "file_name",
    "redirect",
    "render",
    "when",
    "without_bidi",
]
