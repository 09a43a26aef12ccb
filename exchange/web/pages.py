"""Rendering console pages: the jinja2 environment, the context every page gets, and small formatters."""

from __future__ import annotations

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
    """See Other: after a POST the browser GETs the result, so a reload never posts twice."""
    return web.Response(status=303, headers={"Location": location})


__all__ = ["AGENCIES", "JINJA", "KINDS", "TLP", "environment", "redirect", "render", "when"]
