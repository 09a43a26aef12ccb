"""The domain's rules for indicators, checked where a bulletin is written, never where it is received.

The wire model (exchange.model.Indicators) checks shapes only, so that a receiver never refuses a
bulletin because a code list changed after its author signed it. These rules are the author's:
the client API and the console apply them before a post is sealed (docs/protocol.md, 8.3).

Pure: the code lists are data files shipped in packages (`airportsdata` for IATA airport codes,
`pycountry` for ISO 3166-1), read once, on first use; no network, no clock.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import airportsdata
import pycountry

from exchange.errors import InvalidInput
from exchange.model import Bulletin, Indicators

AIR_WAYBILL = re.compile(r"[0-9]{3}-[0-9]{8}")
HS_CODE = re.compile(r"[0-9]{2}(\.?[0-9]{2}){0,4}")
HS_DIGITS = (2, 4, 6, 8, 10)
HS_RESERVED = frozenset({"77"})  # reserved for future use
HS_LAST_CHAPTER = 97  # 98 and 99 are left to national use, not the Harmonized System
AIRPORT = re.compile(r"[A-Z]{3}")
# IATA airline designator (two characters, not both digits) or ICAO (three letters), then the
# flight number (1 to 4 digits) and an optional operational suffix letter (IATA SSIM, ICAO Doc 8585).
FLIGHT = re.compile(r"(?P<airline>[A-Z0-9]{2}[A-Z]?)(?P<number>[0-9]{1,4})(?P<suffix>[A-Z]?)")
COUNTRY = re.compile(r"[A-Z]{2}")
SHOWN = 5  # problems named in one error message; the rest are counted


@dataclass(frozen=True)
class Why:
    """The rule an indicator breaks, in words: `text` in English with %(name)s placeholders for
    `values`, so that the console can show it in the reader's language (exchange.web.contact)."""

    text: str
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.text % self.values if self.values else self.text


@dataclass(frozen=True)
class Problem:
    """One indicator that breaks a rule: the member it is in, what a user calls one (`noun`), the
    value, and the rule it breaks."""

    field: str
    noun: str
    value: str
    why: Why

    @property
    def message(self) -> str:
        """In English, as the client API says it."""
        return f"{self.noun} {self.value}: {self.why}"


@cache
def _airports() -> frozenset[str]:
    return frozenset(airportsdata.load("IATA"))


@cache
def _cities() -> dict[str, tuple[str, list[str]]]:
    """IATA multi-airport city codes (LON, NYC): the city's name and its airports' codes."""
    return {code: (c["name"], sorted(c["airports"])) for code, c in airportsdata.load_iata_macs().items()}


@cache
def _countries() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def air_waybill(value: str) -> Why | None:
    """`NNN-NNNNNNNN`: airline prefix, dash, 8-digit serial whose last digit is its first seven mod 7."""
    if not AIR_WAYBILL.fullmatch(value):
        return Why("should be a 3-digit airline prefix, a dash and an 8-digit serial, e.g. 176-12345675")
    serial = value[4:]
    check = int(serial[:7]) % 7
    if int(serial[7]) != check:
        return Why("check digit should be %(check)s (serial mod 7)", {"check": str(check)})
    return None


def hs_code(value: str) -> Why | None:
    """2, 4, 6, 8 or 10 digits (dots between pairs allowed), in an existing chapter (01-97 but 77)."""
    digits = value.replace(".", "")
    if not HS_CODE.fullmatch(value) or len(digits) not in HS_DIGITS:
        return Why("should have 2, 4, 6, 8 or 10 digits, e.g. 8443 or 8443.99")
    chapter = digits[:2]
    if chapter in HS_RESERVED:
        return Why("chapter %(chapter)s is reserved for future use in the Harmonized System", {"chapter": chapter})
    if not 1 <= int(chapter) <= HS_LAST_CHAPTER:
        return Why(
            "chapter %(chapter)s does not exist in the Harmonized System (chapters 01 to 97)", {"chapter": chapter}
        )
    if len(digits) >= 4 and digits[2:4] == "00":
        return Why(
            "heading 00 does not exist in chapter %(chapter)s (headings are numbered from 01)", {"chapter": chapter}
        )
    return None


def airport(value: str) -> Why | None:
    """An IATA airport code that the `airportsdata` package lists."""
    if not AIRPORT.fullmatch(value):
        return Why("should be an IATA airport code of three capital letters, e.g. NBO")
    if value in _airports():
        return None
    if value in _cities():
        name, codes = _cities()[value]
        return Why(
            "is the IATA code of a city (%(city)s), not an airport: name one of %(airports)s",
            {"city": name, "airports": ", ".join(codes)},
        )
    return Why("is not an IATA airport code")


def flight(value: str) -> Why | None:
    """IATA airline designator (2 characters, not both digits) or ICAO (3 letters), 1-4 digits, a suffix letter."""
    m = FLIGHT.fullmatch(value)
    if m is None:
        return Why("should be an airline designator, a 1 to 4 digit flight number and an optional letter, e.g. KQ100")
    airline = m["airline"]
    if len(airline) == 2 and airline.isdigit():
        return Why(
            "airline designator %(airline)s should not be two digits (IATA: letters, or a letter and a digit)",
            {"airline": airline},
        )
    if len(airline) == 3 and not airline.isalpha():
        return Why(
            "airline designator %(airline)s of three characters should be an ICAO code of three letters",
            {"airline": airline},
        )
    return None


def country(value: str) -> Why | None:
    """An ISO 3166-1 alpha-2 code that the `pycountry` package lists (officially assigned codes)."""
    if not COUNTRY.fullmatch(value):
        return Why("should be an ISO 3166-1 code of two capital letters, e.g. KE")
    if value not in _countries():
        return Why("is not an ISO 3166-1 country code")
    return None


# Indicators member -> (what a user calls one, its rule). `countries` is not a member of
# Indicators yet (adding one is a wire change: docs/protocol.md, 14); it is checked once it is.
RULES: dict[str, tuple[str, Callable[[str], Why | None]]] = {
    "air_waybills": ("air waybill", air_waybill),
    "hs_codes": ("HS code", hs_code),
    "airports": ("airport", airport),
    "flights": ("flight", flight),
    "countries": ("country", country),
}


# Read once: `model_fields` on the class goes through a descriptor of pydantic's, a few µs a time.
_MEMBERS = frozenset(Indicators.model_fields)


def indicator_problems(indicators: Indicators) -> list[Problem]:
    """Every indicator that breaks its rule, in member order: for a form to show next to its field."""
    out = []
    for field, (noun, rule) in RULES.items():
        # A member the model lacks (`countries`) is skipped by name: pydantic's __getattr__ would
        # make and raise an AttributeError for it on every post.
        if field not in _MEMBERS:
            continue
        values: Iterable[str] = getattr(indicators, field)
        for value in values:
            why = rule(value)
            if why is not None:
                out.append(Problem(field, noun, value, why))
    return out


def check_indicators(bulletin: Bulletin) -> None:
    """Return None if every indicator of `bulletin` keeps its domain rule; raise InvalidInput naming
    the rules broken and the values that broke them (the first SHOWN, then how many more), for the
    author only: the audit log gets the members and counts (`ExchangeError.audited`)."""
    problems = indicator_problems(bulletin.indicators)
    if not problems:
        return
    text = "; ".join(p.message for p in problems[:SHOWN])
    if len(problems) > SHOWN:
        text += f"; and {len(problems) - SHOWN} more"
    # The audit log names the members and how many, never the values: they are bulletin content.
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.field] = counts.get(p.field, 0) + 1
    raise InvalidInput(
        text, audited="indicators that break their rules: " + ", ".join(f"{f} {n}" for f, n in counts.items())
    )
