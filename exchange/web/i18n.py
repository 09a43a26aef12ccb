"""The console's languages: gettext catalogues read from the committed .po files, which language a
request gets, and localised dates and numbers.

Only console text is translated (labels, help, messages); bulletin text, titles, names and what
users wrote are shown as written. A person's choice is a `lang` cookie set on the account page;
without one, the browser's Accept-Language decides; English is the default.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from babel.core import negotiate_locale
from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

LANGUAGES = {"en": "English", "fr": "Français"}  # each language in its own name, as the choice shows it
DEFAULT = "en"
LOCALE_DIR = Path(__file__).parent / "locale"
LANG_COOKIE = "lang"
LANG: web.RequestKey[str] = web.RequestKey("console_language", str)

# The placeholders of console messages: %(name)s or %(name)d, as babel extracts and jinja formats them.
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
# How each language writes a moment; the console shows UTC throughout and says so.
DATE_PATTERNS = {"en": "yyyy-MM-dd HH:mm:ss", "fr": "d MMM y, HH:mm:ss"}


def N_(message: str) -> str:  # the conventional gettext marker name, which babel extracts
    """Mark a message for extraction; it is translated where it is shown, in the reader's language."""
    return message


@functools.cache
def translations(lang: str) -> NullTranslations:
    """The catalogue of `lang`, compiled in memory from its .po once per process (English has none)."""
    po = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not po.is_file():
        return NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(buf)


def fill(text: str, values: Mapping[str, object]) -> str:
    """`text` with its %(name)s placeholders replaced; any other % is left as it is."""
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


@dataclass(frozen=True)
class Text:
    """A console message with its values, some of them messages too, translated where it is shown
    (`say`): for a message built in Python whose parts are the console's words."""

    message: str
    values: Mapping[str, str | Text]


def say(lang: str, message: str | Text, **values: object) -> str:
    """A console message in `lang`, with its placeholders filled (plain text, to be escaped)."""
    if isinstance(message, Text):
        own = {k: say(lang, v) if isinstance(v, Text) else v for k, v in message.values.items()}
        return fill(translations(lang).gettext(message.message), {**values, **own})
    return fill(translations(lang).gettext(message), values)


def _accepted(header: str) -> list[str]:
    """The language tags of an Accept-Language header, most wanted first (q=0 means "not this")."""
    tags: list[tuple[float, int, str]] = []
    for n, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params:  # a weight that is not one (q=abc) makes the whole entry unreadable: skip it
            if not (m := re.fullmatch(r"\s*q=([01](?:\.\d{0,3})?)\s*", params)):
                continue
            q = float(m[1])
        if tag and q > 0 and re.fullmatch(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*", tag):
            tags.append((-q, n, tag))
    return [tag for _, _, tag in sorted(tags)]


def language(request: web.Request) -> str:
    """The language of this request's pages: the person's choice (cookie), else the browser's, else English."""
    if LANG in request:
        return request[LANG]
    chosen: str | None = request.cookies.get(LANG_COOKIE)
    if chosen not in LANGUAGES:
        chosen = negotiate_locale(_accepted(request.headers.get("Accept-Language", "")), list(LANGUAGES), sep="-")
    lang = chosen if chosen is not None and chosen in LANGUAGES else DEFAULT
    request[LANG] = lang
    return lang


def set_language_cookie(response: web.StreamResponse, lang: str | None) -> None:
    """Remember a person's choice in this browser (None forgets it: the browser's language applies)."""
    if lang is None:
        response.del_cookie(LANG_COOKIE, path="/console")
    else:
        response.set_cookie(
            LANG_COOKIE, lang, path="/console", secure=True, httponly=True, samesite="Strict", max_age=400 * 86400
        )


def when(value: str | None, lang: str = DEFAULT) -> str:
    """An RFC 3339 UTC timestamp as people of `lang` read it, in UTC."""
    if not value:
        return "—"
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    pattern = DATE_PATTERNS.get(lang, "medium")
    return format_datetime(moment, pattern, tzinfo=dt.UTC, locale=lang) + " UTC"


def number(value: object, lang: str = DEFAULT) -> str:
    """A count as people of `lang` write it (1,234 or 1 234)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return format_decimal(value, locale=lang)


__all__ = [
    "DEFAULT",
    "LANG",
    "LANGUAGES",
    "LANG_COOKIE",
    "LOCALE_DIR",
    "N_",
    "fill",
    "language",
    "number",
    "say",
    "set_language_cookie",
    "translations",
    "when",
]
