"""The console in English and French (issue 17, must show 3: "an officer whose preference is French
sees the console in French").

1. The catalogue: every message the console's templates and Python mark (extracted with babel, as
   `pybabel extract` does with exchange/web/locale/babel.cfg) has a French translation that is not
   empty and not fuzzy, with the same placeholders and HTML tags as the English, and the catalogue
   holds nothing the console no longer says.
2. In chromium: an officer who chooses French on the account page sees the channels, an inbox, a
   bulletin, the compose form and a live notification in French, with French dates, while the
   bulletin's own words stay as written; a browser asking for fr-FR gets French without a choice;
   English stays the default.
3. Over HTTP: error pages in French; the choice (a cookie) beats the browser's language; a choice
   is only taken from a form with the session's CSRF token; nonsense in the header or cookie is
   English.
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from playwright.async_api import expect

from exchange.audit import events as kinds
from exchange.audit.trace import Evidence, chain_of_custody
from exchange.model import Indicators
from exchange.protocol import indicators
from exchange.web import contact, i18n
from exchange.web.auditor import describe, step_detail, step_details
from tests.conftest import Federation, Member
from tests.test_console import C2A, PASSWORD, TITLE, fed, goto, post_by_api, sign_in
from tests.web.test_hostile_console import CSRF, tls

__all__ = ["fed"]

WEB = Path(i18n.__file__).parent
SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # nothing here depends on SQL
# A moment as the French console writes it: "30 nov. 2026, 01:46:07 UTC".
FRENCH_TIME = re.compile(
    r"\d{1,2} (janv|févr|mars|avr|mai|juin|juil|août|sept|oct|nov|déc)\.? \d{4}, \d\d:\d\d:\d\d UTC"
)
ENGLISH_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
PLACEHOLDERS = re.compile(r"%\(\w+\)[sd]|\{\w+\}")
TAGS = re.compile(r"</?[a-z]+[^>]*>")


# -- 1. the catalogue ---------------------------------------------------------------------------


def extracted() -> dict[str | tuple[str, ...], list[str]]:
    """Every message exchange/web marks, with where it is, as `pybabel extract -k N_` finds them."""
    with (WEB / "locale" / "babel.cfg").open() as f:
        methods, options = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]  # babel leaves it unannotated
    found: dict[str | tuple[str, ...], list[str]] = {}
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    for name, line, message, _, _ in extract_from_dir(
        str(WEB), methods, options_map=options, keywords=keywords, strip_comment_tags=True
    ):
        found.setdefault(message, []).append(f"{name}:{line}")
    return found


def shape(text: str) -> tuple[list[str], list[str]]:
    """The placeholders and HTML tags of a message, which a translation must keep."""
    return sorted(PLACEHOLDERS.findall(text)), sorted(TAGS.findall(text))


def test_every_console_message_has_a_french_translation() -> None:
    messages = extracted()
    assert len(messages) > 300  # the whole console, templates and Python
    with (WEB / "locale" / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f, locale="fr")
    assert catalog.num_plurals == 2
    held = {m.id: m for m in catalog if m.id}
    problems = []
    for msgid, where in sorted(messages.items(), key=str):
        entry = held.get(msgid)
        if entry is None:
            problems.append(f"untranslated {msgid!r} ({where[0]})")
            continue
        if entry.fuzzy:
            problems.append(f"fuzzy {msgid!r}")
        english = [msgid] if isinstance(msgid, str) else list(msgid)
        assert entry.string is not None  # a message read from a .po file has a string, "" if untranslated
        french = [entry.string] if isinstance(entry.string, str) else list(entry.string)
        if not all(s.strip() for s in french):
            problems.append(f"empty translation of {msgid!r}")
        for n, text in enumerate(french):
            # Plural forms: French form 0 is for 0 and 1, like the English singular.
            source = english[min(n, len(english) - 1)]
            if shape(text) != shape(source) and shape(text) != shape(english[-1]):
                problems.append(f"{msgid!r}: {text!r} does not keep {shape(source)}")
    stale = [m for m in held if m not in messages]
    assert problems == [], "\n".join(problems)
    assert stale == [], f"the catalogue holds messages the console no longer uses: {stale}"


def test_the_catalogue_is_read_from_the_po_file_once() -> None:
    """No compiled .mo in the tree: the .po is compiled in memory, once per process."""
    assert not list(WEB.glob("locale/**/*.mo"))
    assert i18n.translations("fr") is i18n.translations("fr")
    assert i18n.say("fr", "Channels") == "Canaux"
    assert i18n.say("fr", "Entry %(idx)s", idx=7) == "Entrée 7"
    assert i18n.say("fr", "not a console message %(x)s 100%", x=1) == "not a console message 1 100%"
    assert i18n.say("en", "Channels") == "Channels"


def test_dates_and_numbers_are_written_as_each_language_writes_them() -> None:
    assert i18n.when("2026-11-30T01:46:07.285Z") == "2026-11-30 01:46:07 UTC"  # English as before
    assert i18n.when("2026-11-30T01:46:07.285Z", "fr") == "30 nov. 2026, 01:46:07 UTC"
    assert FRENCH_TIME.fullmatch(i18n.when("2026-02-03T23:00:00Z", "fr"))
    assert i18n.when(None, "fr") == "—"
    assert i18n.number(12345) == "12,345"
    assert i18n.number(12345, "fr") == "12\u202f345"


def test_audit_summaries_are_worded_in_each_language() -> None:
    """What an audit entry records, in words: English as before, French from the same fields."""
    posted = {"event": kinds.BULLETIN_POSTED, "user": "officer", "seq": 3, "recipients": ["gb-avsec", "nl-customs"]}
    assert describe(posted) == "posted by officer (seq 3) for gb-avsec, nl-customs"
    assert describe(posted, "fr") == "publié par officer (n° 3) pour gb-avsec, nl-customs"
    delivered = {"event": kinds.BULLETIN_DELIVERED, "to": "gb-avsec", "receipt_at": "2026-11-30T01:46:07.285Z"}
    assert describe(delivered) == "signed receipt from gb-avsec: received 2026-11-30 01:46:07 UTC"
    assert describe(delivered, "fr") == "accusé signé de gb-avsec\u00a0: reçu le 30 nov. 2026, 01:46:07 UTC"
    # One entry for many recipients: the first few named, the rest counted.
    many = {"event": kinds.BULLETIN_DELIVERED_TO, "to": {f"n{i:02}": "2026-11-30T01:46:07.285Z" for i in range(12)}}
    assert describe(many) == "signed receipts from n00, n01, n02, n03, n04, n05, n06, n07 and 4 more"
    assert describe(many, "fr") == "accusés signés de n00, n01, n02, n03, n04, n05, n06, n07 et 4 de plus"
    sent = {"event": kinds.BULLETIN_SENT_TO, "to": {"nl-customs": "t2", "gb-avsec": "t1"}}
    assert describe(sent) == "sent to gb-avsec, nl-customs"
    assert describe(sent, "fr") == "envoyé à gb-avsec, nl-customs"
    # ... and one recipient as the one-recipient kinds are worded.
    one = {"event": kinds.BULLETIN_DELIVERED_TO, "to": {"gb-avsec": "2026-11-30T01:46:07.285Z"}}
    assert describe(one) == "signed receipt from gb-avsec: received 2026-11-30 01:46:07 UTC"
    assert describe({"event": kinds.BULLETIN_SENT_TO, "to": {"gb-avsec": "t1"}}, "fr") == "envoyé à gb-avsec"
    created = {"event": kinds.USER_CREATED, "user": "kim", "role": "auditor", "actor": "admin"}
    assert describe(created) == "kim created as auditor by admin"
    assert describe(created, "fr") == "kim créé comme auditor par admin"
    disabled = {"event": kinds.USER_DISABLED, "user": "kim", "actor": "cli"}
    assert describe(disabled) == "kim disabled by cli: token, password and sessions ended"
    assert describe(disabled, "fr") == "kim désactivé par cli\u00a0: jeton, mot de passe et sessions supprimés"
    enabled = {**disabled, "event": kinds.USER_ENABLED}
    assert describe(enabled, "fr") == "kim réactivé par cli, avec un nouveau jeton d'API"
    failed = {"event": kinds.CONSOLE_SIGNIN_FAILED, "unknown_user": True, "address": "192.0.2.1"}
    assert describe(failed, "fr") == "échec de connexion (un nom d'utilisateur inconnu) depuis 192.0.2.1"
    assert describe({"event": "no.such.event"}, "fr") == ""


def test_a_trace_in_french_words_each_recipients_step_of_an_entry_that_names_several() -> None:
    """One 'bulletin.sent_to' and one 'bulletin.delivered_to' back every recipient's step: in
    French each recipient's step is worded for that recipient alone, with its own receipt time."""
    bid, at = "ab" * 32, "2026-11-30T01:46:07.285Z"
    author = Evidence(
        "nl-customs",
        (
            {
                "idx": 3,
                "event": kinds.BULLETIN_SENT_TO,
                "at": at,
                "bulletin": bid,
                "to": {"gb-avsec": "t", "ke-customs": "t"},
            },
            {
                "idx": 4,
                "event": kinds.BULLETIN_DELIVERED_TO,
                "at": at,
                "bulletin": bid,
                "to": {"gb-avsec": at, "ke-customs": at},
            },
        ),
    )
    trace = chain_of_custody(bid, "c2a", "nl-customs", ["nl-customs", "gb-avsec", "ke-customs"], [author])
    details = step_details(trace, "fr")
    for leg in trace.legs:
        sent, receipt = leg.step("sent"), leg.step("receipt")
        assert step_detail(sent, details, "fr", leg.recipient) == f"envoyé à {leg.recipient}"
        said = step_detail(receipt, details, "fr", leg.recipient)
        assert said == f"accusé signé de {leg.recipient}\u00a0: reçu le 30 nov. 2026, 01:46:07 UTC"


# -- 2. in the browser --------------------------------------------------------------------------


async def context_page(browser: Any, **options: Any) -> Any:
    context = await browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800}, **options)
    return await context.new_page()


@SQLITE
async def test_an_officer_who_prefers_french_sees_the_console_in_french(fed: Federation, browser: Any) -> None:
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    bid = await post_by_api(nl, C2A, handling={"tlp": "AMBER", "no_onward_sharing": False})
    page = await context_page(browser, locale="en-GB")
    await sign_in(page, gb, "officer", PASSWORD)
    await expect(page.get_by_role("heading", name="Your channels")).to_be_visible()

    # The choice, on the account page, with the session's CSRF token like every form.
    await goto(page, gb, "/console/account")
    await page.get_by_label("Language of the console").select_option("fr")
    await page.get_by_role("button", name="Save the language").click()
    await expect(page.get_by_role("status")).to_have_text(
        "La console utilise désormais la langue choisie dans ce navigateur."
    )
    await expect(page.get_by_role("heading", name="Votre compte")).to_be_visible()
    assert await page.locator("html").get_attribute("lang") == "fr"
    await expect(page.get_by_label("Langue de la console")).to_have_value("fr")
    (cookie,) = [c for c in await page.context.cookies() if c["name"] == i18n.LANG_COOKIE]
    assert (cookie["value"], cookie["path"], cookie["secure"], cookie["sameSite"]) == ("fr", "/console", True, "Strict")

    # Channels.
    await goto(page, gb, "/console/channels")
    await expect(page.get_by_role("heading", name="Vos canaux")).to_be_visible()
    table = page.locator("table.list")
    for words in ("Canal", "Services", "Membres", "Diffusion par défaut", "Droits de ce nœud", "Non lu"):
        await expect(table.locator("thead")).to_contain_text(words)
    await expect(table).to_contain_text("Douane, Sûreté aérienne, Organisation internationale")
    await expect(table).to_contain_text("publication, lecture")
    await expect(page.get_by_role("navigation", name="Menu principal")).to_contain_text("Rédiger")
    await expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()

    # An inbox: French labels and dates; the bulletin's title as it was written.
    await page.get_by_role("link", name=C2A).click()
    row = page.locator("table.inbox tbody tr", has_text=TITLE)
    await expect(row).to_contain_text("Non lu")
    await expect(row).to_contain_text("Alerte")
    assert FRENCH_TIME.fullmatch(await row.locator("time").inner_text())
    await expect(page.get_by_role("link", name="Rédiger un bulletin")).to_be_visible()
    await expect(page.get_by_role("link", name="Exporter en lot STIX 2.1")).to_be_visible()
    await expect(page.locator("table.inbox thead")).to_contain_text("Publié le")

    # A live notification, in French too.
    await page.evaluate("() => { window.notReloaded = true; }")
    await post_by_api(nl, C2A, title="Second consignment, NBO", kind="seizure-report")
    status = page.locator("#live-status")
    await expect(status).to_contain_text("Nouveau rapport de saisie", timeout=30_000)
    await expect(status).to_contain_text(f" dans {C2A}, de ")
    fresh = page.locator("table.inbox tbody tr").first
    await expect(fresh).to_contain_text("Second consignment, NBO")
    await expect(fresh).to_contain_text("Non lu")
    assert FRENCH_TIME.fullmatch(await fresh.locator("time").inner_text())
    assert await page.evaluate("() => window.notReloaded === true")

    # A bulletin: the console's words in French, the author's words untouched.
    await goto(page, gb, f"/console/bulletins/{bid}")
    await expect(page.get_by_role("heading", name=TITLE)).to_be_visible()
    await expect(page.locator(".tlp-banner")).to_contain_text("Diffusion limitée")
    await expect(page.locator("#signature")).to_contain_text("Signature vérifiée.")
    await expect(page.locator("#signature")).to_contain_text("(Douane, NL) avec sa clé inscrite au registre")
    facts = page.locator("dl.facts")
    for words in ("Type", "Alerte", "Canal", "Auteur", "Publié le", "Identifiant du bulletin"):
        await expect(facts).to_contain_text(words)
    assert FRENCH_TIME.fullmatch(await facts.locator("time").inner_text())
    await expect(page.get_by_role("heading", name="Accusés de réception")).to_be_visible()
    await expect(page.get_by_role("link", name="Répondre ou donner un retour d'information")).to_be_visible()
    await expect(page.locator(".body")).to_contain_text("X-ray images show wiring")  # as written

    # The compose form, and its refusal.
    await page.get_by_role("link", name="Répondre ou donner un retour d'information").click()
    await expect(page.get_by_role("heading", name="Rédiger un bulletin")).to_be_visible()
    await expect(page.get_by_label("Type")).to_have_value("feedback")
    await expect(page.get_by_label("Type").locator("option:checked")).to_have_text("Retour d'information")
    await expect(page.get_by_label("Titre")).to_have_value("Re: " + TITLE)  # the title is the author's
    for label in ("Numéros de lettre de transport aérien (LTA)", "Codes SH", "Aéroports", "Vols", "Fichiers"):
        await expect(page.get_by_label(label)).to_be_visible()
    await expect(page.get_by_label("Langue", exact=True)).to_have_value("fr")
    await page.get_by_label("Titre").fill(" ")  # only a space: no title
    await page.get_by_role("button", name="Signer, chiffrer et publier").click()
    alert = page.locator("#form-errors")
    await expect(alert).to_contain_text("Le bulletin n'a pas été publié.")
    await expect(alert).to_contain_text("Donnez au bulletin un titre de 200 caractères au plus.")

    # Back to the browser's language (en-GB here): English again.
    await goto(page, gb, "/console/account")
    await page.get_by_label("Langue de la console").select_option("")
    await page.get_by_role("button", name="Enregistrer la langue").click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    assert await page.locator("html").get_attribute("lang") == "en"
    assert not [c for c in await page.context.cookies() if c["name"] == i18n.LANG_COOKIE]


@SQLITE
async def test_a_browser_asking_for_french_gets_french_and_english_is_the_default(
    fed: Federation, browser: Any
) -> None:
    nl = fed["nl-customs"]
    await post_by_api(nl, C2A)
    french = await context_page(browser, locale="fr-FR")  # Accept-Language: fr-FR
    await goto(french, nl, "/console/")
    await expect(french.get_by_role("heading", name="Connexion")).to_be_visible()
    assert await french.locator("html").get_attribute("lang") == "fr"
    await french.get_by_label("Nom d'utilisateur").fill("officer")
    await french.get_by_label("Mot de passe").fill(PASSWORD)
    await french.get_by_role("button", name="Connexion").click()
    await expect(french.get_by_role("heading", name="Vos canaux")).to_be_visible()
    await goto(french, nl, f"/console/channels/{C2A}")
    assert FRENCH_TIME.fullmatch(await french.locator("table.inbox time").first.inner_text())
    await goto(french, nl, "/console/account")
    await expect(french.get_by_label("Langue de la console")).to_have_value("")  # no choice made

    for locale in ("en-US", "de-DE", "pt-BR"):  # English, or a language the console does not speak
        page = await context_page(browser, locale=locale)
        await sign_in(page, nl, "officer", PASSWORD)
        await expect(page.get_by_role("heading", name="Your channels")).to_be_visible()
        assert await page.locator("html").get_attribute("lang") == "en"
        await goto(page, nl, f"/console/channels/{C2A}")
        await expect(page.locator("table.inbox tbody tr").first).to_contain_text("Unread")
        assert ENGLISH_TIME.fullmatch(await page.locator("table.inbox time").first.inner_text())
        await page.context.close()


# -- 3. over HTTP ---------------------------------------------------------------------------------


async def fetch(member: Member, path: str, headers: dict[str, str]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(connector=tls(member)) as http,
        http.get(member.config.endpoint + path, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, html.unescape(await resp.text())  # "n'y" is written n&#39;y


@SQLITE
async def test_error_pages_speak_the_readers_language(fed: Federation) -> None:
    nl = fed["nl-customs"]
    status, page = await fetch(nl, "/console/no-such-page", {"Accept-Language": "fr-CH, en;q=0.5"})
    assert status == 404
    assert '<html lang="fr">' in page
    assert "<bdi>Introuvable</bdi>" in page and "(statut 404)" in page
    assert "Il n'y a rien ici que vous puissiez consulter." in page
    assert "Le nœud indique\u00a0: <bdi>cette page n'existe pas dans la console</bdi>" in page
    assert "Retour à la console" in page

    status, page = await fetch(nl, "/console/no-such-page", {"Accept-Language": "en-GB, fr;q=0.9"})
    assert status == 404 and '<html lang="en">' in page and "There is nothing here that you may see." in page

    # The person's choice beats the browser's; a cookie that is not a language is ignored.
    _, page = await fetch(nl, "/console/no-such-page", {"Accept-Language": "en", "Cookie": "lang=fr"})
    assert "Introuvable" in page
    for cookie, header in (("lang=xx", "en"), ("lang=", "*"), ("lang=fr-FR", "de;q=1, en;q=0.1")):
        _, page = await fetch(nl, "/console/no-such-page", {"Accept-Language": header, "Cookie": cookie})
        assert '<html lang="en">' in page, (cookie, header)
    for header in ("fr;q=0", "fr;q=abc, en", "x" * 5000, "ƒr", ",,,;;;"):
        _, page = await fetch(nl, "/console/no-such-page", {"Accept-Language": header})
        assert '<html lang="en">' in page, header

    # A bad query in French: the page explains in French, and quotes the node's message.
    async with aiohttp.ClientSession(connector=tls(nl), cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        url = nl.config.endpoint
        async with http.get(url + "/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": "officer", "password": PASSWORD, "next": ""}
        async with http.post(url + "/console/sign-in", data=form) as resp:
            csrf = CSRF.search(await resp.text())
        assert csrf is not None
        headers = {"Accept-Language": "fr"}
        async with http.get(url + f"/console/channels/{C2A}/stix?bulletin=zz", headers=headers) as resp:
            assert resp.status == 422
            page = html.unescape(await resp.text())
        assert "Saisie invalide" in page and "Le nœud n'a pas pu accepter ce qui a été envoyé." in page
        assert "identifiant complet (64 chiffres hexadécimaux)" in page

        # The language form takes only the session's token and only a language the console speaks.
        async with http.post(url + "/console/account/language", data={"language": "fr"}, headers=headers) as resp:
            assert resp.status == 403 and "Accès refusé" in await resp.text()
        assert "lang" not in {c.key for c in http.cookie_jar}
        bad = {"csrf": csrf.group(1), "language": "de"}
        async with http.post(url + "/console/account/language", data=bad, headers=headers) as resp:
            assert resp.status == 422 and "choisissez l&#39;une des langues proposées" in await resp.text()
        assert "lang" not in {c.key for c in http.cookie_jar}
        good = {"csrf": csrf.group(1), "language": "fr"}
        async with http.post(url + "/console/account/language", data=good, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/console/account?language=1"
            assert "Path=/console" in resp.headers["Set-Cookie"] and "SameSite=Strict" in resp.headers["Set-Cookie"]
        async with http.get(url + "/console/channels", headers={"Accept-Language": "en"}) as resp:
            assert "Vos canaux" in await resp.text()


def test_the_indicator_rules_are_worded_in_each_language() -> None:
    """The compose form names an indicator that breaks its rule in the reader's language: the
    console marks each rule's words (exchange/web/contact.py), which must be those the rules
    themselves give (exchange/protocol/indicators.py), so none is left in English."""
    source = ast.parse(Path(indicators.__file__).read_text(encoding="utf-8"))
    said = {
        node.args[0].value
        for node in ast.walk(source)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "Why"
        and isinstance(node.args[0], ast.Constant)
    }
    assert said == set(contact.INDICATOR_RULES)
    assert {noun for noun, _ in indicators.RULES.values()} == set(contact.INDICATOR_NOUNS)
    bulletin = Indicators.model_validate({"air_waybills": ["176-12345678"], "airports": ["LON"]})
    shown = [i18n.say("fr", contact.indicator_error(p)) for p in indicators.indicator_problems(bulletin)]
    assert shown == [
        "lettre de transport aérien 176-12345678\u00a0: le chiffre de contrôle devrait être 5 "
        "(numéro de série modulo 7)",
        "aéroport LON\u00a0: est le code IATA d'une ville (London), pas d'un aéroport\u00a0: indiquez l'un de "
        "LCY, LGW, LHR, LTN, STN",
    ]
    assert [i18n.say("en", contact.indicator_error(p)) for p in indicators.indicator_problems(bulletin)] == [
        p.message for p in indicators.indicator_problems(bulletin)
    ]
