"""The author's indicator rules (exchange.protocol.indicators): each rule's good and bad cases, with
the message a user sees, and the wire model that keeps accepting what the rules refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import InvalidInput
from exchange.model import Bulletin
from exchange.protocol.indicators import Problem, Why, check_indicators, country, indicator_problems


def make_bulletin(**indicators: Any) -> Bulletin:
    return Bulletin.model_validate(
        {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "t", "indicators": indicators}
    )


def refusal(**indicators: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        check_indicators(make_bulletin(**indicators))
    return caught.value.detail


@pytest.mark.parametrize(
    ("member", "good"),
    [
        ("air_waybills", ["176-12345675", "020-00000000", "157-99999992"]),
        ("hs_codes", ["8443", "844399", "8443.99", "8443.99.10", "84439910", "0101.21.00.10", "9706"]),
        ("airports", ["NBO", "AMS", "CDG", "JFK", "DXB"]),
        ("flights", ["KQ100", "BA2517", "U21234", "3U8633", "KQ100A", "KLM1234", "AF1", "LH0400"]),
    ],
)
def test_good_indicators_pass(member: str, good: list[str]) -> None:
    check_indicators(make_bulletin(**{member: good}))  # returns None, raises nothing


def test_no_indicators_pass() -> None:
    check_indicators(make_bulletin())


# -- air waybills: the serial's last digit is its first seven digits modulo 7 -------------------


def test_air_waybill_check_digit_is_named_with_the_right_one() -> None:
    assert refusal(air_waybills=["176-12345678"]) == "air waybill 176-12345678: check digit should be 5 (serial mod 7)"


@pytest.mark.parametrize(("awb", "check"), [("020-00000001", 0), ("157-99999990", 2), ("618-70000006", 0)])
def test_air_waybill_every_wrong_check_digit_is_refused(awb: str, check: int) -> None:
    assert refusal(air_waybills=[awb]) == f"air waybill {awb}: check digit should be {check} (serial mod 7)"


# -- HS codes: 2, 4, 6, 8 or 10 digits, in chapters 01 to 97 but 77 -------------------------------


def test_hs_reserved_chapter_77_is_refused() -> None:
    assert refusal(hs_codes=["7701"]) == "HS code 7701: chapter 77 is reserved for future use in the Harmonized System"


@pytest.mark.parametrize("code", ["0001", "9801", "9903.00"])
def test_hs_chapters_outside_01_to_97_are_refused(code: str) -> None:
    chapter = code[:2]
    assert refusal(hs_codes=[code]) == (
        f"HS code {code}: chapter {chapter} does not exist in the Harmonized System (chapters 01 to 97)"
    )


def test_hs_heading_00_is_refused() -> None:
    assert refusal(hs_codes=["8400.10"]) == (
        "HS code 8400.10: heading 00 does not exist in chapter 84 (headings are numbered from 01)"
    )


def test_hs_rule_on_digit_counts() -> None:
    """The rule takes 2 to 10 digits in pairs; the wire shape (4 to 10) already keeps out the others."""
    problems = indicator_problems(make_bulletin().indicators.model_copy(update={"hs_codes": ["84", "84431", "97"]}))
    assert problems == [
        Problem("hs_codes", "HS code", "84431", Why("should have 2, 4, 6, 8 or 10 digits, e.g. 8443 or 8443.99"))
    ]
    assert problems[0].message == "HS code 84431: should have 2, 4, 6, 8 or 10 digits, e.g. 8443 or 8443.99"


# -- airports: IATA codes that airportsdata lists --------------------------------------------------


def test_unknown_airport_is_refused() -> None:
    assert refusal(airports=["ZZZ"]) == "airport ZZZ: is not an IATA airport code"


def test_city_code_names_the_airports_to_choose_from() -> None:
    assert refusal(airports=["LON"]) == (
        "airport LON: is the IATA code of a city (London), not an airport: name one of LCY, LGW, LHR, LTN, STN"
    )


# -- flights: IATA (2 characters, not both digits) or ICAO (3 letters), 1-4 digits, a suffix ----


def test_flight_with_two_digit_airline_is_refused() -> None:
    assert refusal(flights=["12345"]) == (
        "flight 12345: airline designator 12 should not be two digits (IATA: letters, or a letter and a digit)"
    )


def test_flight_with_three_character_airline_not_all_letters_is_refused() -> None:
    assert refusal(flights=["K1A12"]) == (
        "flight K1A12: airline designator K1A of three characters should be an ICAO code of three letters"
    )


# -- countries: ISO 3166-1 alpha-2 as pycountry lists them ------------------------------------------


@pytest.mark.parametrize("code", ["KE", "NL", "GB", "FR", "CN"])
def test_iso_country_codes_pass(code: str) -> None:
    assert country(code) is None


@pytest.mark.parametrize("code", ["UK", "XK", "ZZ", "EU"])
def test_codes_that_are_not_iso_3166_countries_are_refused(code: str) -> None:
    assert str(country(code)) == "is not an ISO 3166-1 country code"


def test_country_shape() -> None:
    assert str(country("ken")) == "should be an ISO 3166-1 code of two capital letters, e.g. KE"


# -- one message for several problems; the wire keeps accepting them -------------------------------


def test_several_problems_in_one_message_in_member_order() -> None:
    assert refusal(flights=["12345"], airports=["ZZZ"], air_waybills=["176-12345678"]) == (
        "air waybill 176-12345678: check digit should be 5 (serial mod 7); "
        "airport ZZZ: is not an IATA airport code; "
        "flight 12345: airline designator 12 should not be two digits (IATA: letters, or a letter and a digit)"
    )


def test_many_problems_are_counted_past_five() -> None:
    awbs = [f"176-1234567{d}" for d in (0, 1, 2, 3, 4, 6, 7, 8)]
    detail = refusal(air_waybills=awbs)
    assert detail.count("check digit should be 5") == 5
    assert detail.endswith("; and 3 more")


def test_problems_name_their_form_field() -> None:
    problems = indicator_problems(make_bulletin(airports=["NBO", "ZZZ"], hs_codes=["7701"]).indicators)
    assert [(p.field, p.value) for p in problems] == [("hs_codes", "7701"), ("airports", "ZZZ")]


def test_the_wire_model_accepts_what_the_author_rules_refuse() -> None:
    """Receivers parse the payload with the model only: a bulletin is never refused for a code list."""
    bulletin = make_bulletin(air_waybills=["176-12345678"], airports=["ZZZ"], hs_codes=["7701"], flights=["12345"])
    received = Bulletin.model_validate({**json.loads(bulletin.payload_bytes), "handling": {"tlp": "AMBER"}})
    assert received == bulletin


@pytest.mark.parametrize(
    "module", ["exchange/model.py", "exchange/service/receiving.py", "exchange/service/catchup.py"]
)
def test_receivers_do_not_apply_the_author_rules(module: str) -> None:
    assert "indicators import" not in (Path(__file__).parent.parent / module).read_text(encoding="utf-8")
