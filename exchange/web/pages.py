"""Rendering console pages: the jinja2 environment, the context every page gets, and small formatters."""

from __future__ import annotations

import functools
import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from exchange.errors import UnknownPeer
from exchange.http.appkeys import SERVICE
from exchange.web import i18n
from exchange.web.i18n import N_, language
from exchange.web.session import CSRF_FIELD, Session, csrf_token

TEMPLATES = Path(__file__).parent / "templates"
# One environment per language, each with its catalogue installed: a page is rendered in one go,
# and no request's language can leak into another's.
JINJA: web.AppKey[dict[str, jinja2.Environment]] = web.AppKey("console_jinja", dict)

# Labels the templates translate with the `tr` filter (they are console text, not what users wrote).
# FIRST TLP 2.0: the label's colour (on black) and what it allows.
TLP = {
    "CLEAR": ("#FFFFFF", N_("Recipients may share this with the world; there is no limit on disclosure.")),
    "GREEN": ("#33FF00", N_("Limited disclosure: recipients may share this within their community, not publicly.")),
    "AMBER": (
        "#FFC000",
        N_(
            "Limited disclosure: recipients may share this only on a need-to-know basis within their "
            "organisation and its clients."
        ),
    ),
    "AMBER+STRICT": ("#FFC000", N_("Limited disclosure: recipients may share this only within their organisation.")),
    "RED": ("#FF2B2B", N_("For the eyes and ears of individual recipients only; no further disclosure.")),
}
AGENCIES = {
    "customs": N_("Customs"),
    "aviation-security": N_("Aviation security"),
    "police": N_("Police"),
    "international": N_("International organisation"),
}
KINDS = {
    "alert": N_("Alert"),
    "threat-bulletin": N_("Threat bulletin"),
    "seizure-report": N_("Seizure report"),
    "feedback": N_("Feedback"),
    "request-for-information": N_("Request for information"),
    "unreadable": N_("Unreadable summary"),  # a stored summary that cannot be read (exchange.service.summaries)
}
NAV = {
    "contact-point": [
        ("channels", N_("Channels")),
        ("compose", N_("Compose")),
        ("search", N_("Search")),
        ("peers", N_("Partners")),
    ],
    "auditor": [
        ("audit", N_("Audit log")),
        ("audit/checkpoints", N_("Checkpoints")),
        ("audit/trace", N_("Trace")),
        ("channels", N_("Channels")),
        ("peers", N_("Partners")),
    ],
    "admin": [
        ("admin", N_("Administration")),
        ("channels", N_("Channels")),
        ("audit/checkpoints", N_("Checkpoints")),
        ("peers", N_("Partners")),
    ],
}

# Words the templates show through `tr` that come from elsewhere: roles and rights (model), why a
# reference is hidden (service.inbox), the status of a held receipt (receipts table).
WORDS = (
    N_("contact-point"),
    N_("auditor"),
    N_("admin"),
    N_("feed"),
    N_("read"),
    N_("post"),
    N_("not available to you"),
    N_("received"),
    N_("opened"),
)
# The live notification's first words, one per kind (French nouns have a gender).
NEWS = {
    "alert": N_("New alert"),
    "threat-bulletin": N_("New threat bulletin"),
    "seizure-report": N_("New seizure report"),
    "feedback": N_("New feedback"),
    "request-for-information": N_("New request for information"),
    "unreadable": N_("New bulletin, its summary unreadable"),
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
    """An RFC 3339 UTC timestamp as people read it (in English; pages use their language's `when`)."""
    return i18n.when(value)


def environment(lang: str = i18n.DEFAULT) -> jinja2.Environment:
    """The console's templates in `lang`: `{% trans %}` and `_()` for their own text, the `tr` filter
    for console labels held in Python, `when` and `number` written as people of `lang` write them."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template is HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    # newstyle: placeholders are filled by the gettext call, and their values are escaped.
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = functools.partial(i18n.when, lang=lang)
    env.filters["number"] = functools.partial(i18n.number, lang=lang)
    # A message from Python (a label, an error): translated if it is one of the console's, filled,
    # and returned as plain text, so autoescaping still applies to whatever it quotes.
    env.filters["tr"] = functools.partial(i18n.say, lang)
    env.filters["short"] = lambda value: str(value)[:12]
    env.filters["without_bidi"] = without_bidi
    env.filters["file_name"] = file_name
    env.globals.update(
        TLP=TLP, AGENCIES=AGENCIES, KINDS=KINDS, CSRF_FIELD=CSRF_FIELD, lang=lang, LANGUAGES=i18n.LANGUAGES
    )
    return env


def environments() -> dict[str, jinja2.Environment]:
    """One environment per language the console speaks (`render` picks the request's)."""
    return {lang: environment(lang) for lang in i18n.LANGUAGES}


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
        request.app[JINJA][language(request)]
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
    "NEWS",
    "TLP",
    "environment",
    "environments",
    "file_name",
    "redirect",
    "render",
    "when",
    "without_bidi",
]
