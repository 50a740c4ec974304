"""Identifier validation: GB 32100-2015 (USCC), GB 11714-1997 (org code), GB 11643-1999 (ID).

The module under test computes check characters the way the standards *generate* them. The
reference functions here instead use the standards' *verification* equations (the weighted
sum over all characters, check included, is ≡ 0 mod 31 / ≡ 0 mod 11 / ≡ 1 mod 11), with
weight tables written out or derived the other way round — a second, independent means.
"""

from __future__ import annotations

import contextlib
import random
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.identifiers import (
    USCC_ALPHABET,
    IdentifierCheck,
    admin_division,
    check_resident_id,
    check_uscc,
    normalize_identifier,
    org_code_check_char,
    resident_id_check_char,
    uscc_check_char,
)
from tests.kit.identifiers import make_pilot_uscc, make_resident_id, make_uscc

# --- independent reference implementations ---------------------------------------------

REF_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
# 3^(i-1) mod 31, written out: 1, 3, 9, 27, 81-62, 19·3-31, ...
REF_USCC_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]
REF_ORG_WEIGHTS = [3, 7, 9, 10, 5, 8, 4, 2]
# ISO 7064 MOD 11-2, derived rather than copied: W_i = 2^(18-i) mod 11.
REF_ID_WEIGHTS = [pow(2, 18 - i, 11) for i in range(1, 19)]

SU_XI_CHANG = ["320500", "320200", "320400", "310118", "320509", "330421"]


def ref_uscc_sum_ok(code: str) -> bool:
    """GB 32100: Σ_{i≤17} C_i·W_i + C_18 ≡ 0 (mod 31)."""
    values = [REF_USCC_CHARS.index(char) for char in code]
    return (
        sum(v * w for v, w in zip(values[:17], REF_USCC_WEIGHTS, strict=True)) + values[17]
    ) % 31 == 0


def ref_org_value(char: str) -> int:
    return int(char) if char.isdigit() else ord(char) - ord("A") + 10


def ref_org_ok(org_code: str) -> bool:
    """GB 11714: Σ C_i·W_i + C_9 ≡ 0 (mod 11), C_9 = 10 for X (a written 0 stands for 11)."""
    if org_code[8] not in "0123456789X":
        return False
    total = sum(ref_org_value(c) * w for c, w in zip(org_code[:8], REF_ORG_WEIGHTS, strict=True))
    check = 10 if org_code[8] == "X" else int(org_code[8])
    return (total + check) % 11 == 0


def ref_resident_ok(number: str) -> bool:
    """GB 11643: Σ_{i≤18} a_i·W_i ≡ 1 (mod 11) with W_18 = 1 and X = 10."""
    values = [10 if char == "X" else int(char) for char in number]
    return sum(v * w for v, w in zip(values, REF_ID_WEIGHTS, strict=True)) % 11 == 1


def test_reference_weights_match_the_standards_tables() -> None:
    assert [pow(3, i - 1, 31) for i in range(1, 18)] == REF_USCC_WEIGHTS
    assert REF_ID_WEIGHTS[:17] == [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    assert REF_ID_WEIGHTS[17] == 1
    assert len(REF_USCC_CHARS) == 31
    assert not set("IOSVZ") & set(REF_USCC_CHARS)


# --- hand-checked examples ---------------------------------------------------------------

KNOWN_USCC = [
    # The example code widely cited with GB 32100. Org code M000100Y: M=22, Y=34;
    #   22·3 + 1·5 + 34·2 = 139; 139 mod 11 = 7; 11−7 = 4 → '4'.
    # USCC (M=21, Y=30): 9·1+1·3+3·9+5·27+0+1·26+0+0+21·20+0+0+0+1·8+0+0+30·30+4·28
    #   = 1640; 1640 mod 31 = 28; 31−28 = 3 → '3'.
    "91350100M000100Y43",
    # Suzhou. Org body MA1Q2R3T (M=22 A=10 Q=26 R=27 T=29):
    #   66+70+9+260+10+216+12+58 = 701; 701 mod 11 = 8; 11−8 = 3 → '3'.
    # USCC (M=21 A=10 Q=24 R=25 T=26): 9+3+27+54+0+130+0+0+420+290+25+312+16+600+30+780+84
    #   = 2780; 2780 mod 31 = 21; 31−21 = 10 → 'A'.
    "91320500MA1Q2R3T3A",
    # USCC check 31 → '0'. Org body 00000009: 9·2 = 18; 18 mod 11 = 7; 11−7 = 4 → '4'.
    #   USCC: 9+3+27+54+0+52+0+0+0·7+9·30+4·28 = 527 = 17·31; 31−0 = 31 → '0'.
    "913202000000000940",
    # Org check 10 → 'X'. Body 00000006: 6·2 = 12; 12 mod 11 = 1; 11−1 = 10 → 'X'.
    #   USCC (X=29): 9+3+27+54+0+104+0+0+6·30+29·28 = 1189; 1189 mod 31 = 11; 31−11 = 20
    #   → 'L'.
    "9132040000000006XL",
    # Org check 11 → '0'. Body 00000000: Σ = 0; 11−0 = 11 → '0'.
    #   USCC: 5+3+27+54+0+52 = 141; 141 mod 31 = 17; 31−17 = 14 → 'E'.
    "51320200000000000E",
]

KNOWN_RESIDENT_IDS = [
    # GB 11643-1999's own examples. 1·7+1·9+0+1·5+0+5·4+1·2+9·1+4·6+9·3+1·7+2·9+3·10+1·5
    #   +0+0+2·2 = 167; 167 mod 11 = 2 → 'X'.
    "11010519491231002X",
    # 28+36+0+25+16+16+2+8+48+0+0+9+0+5+0+0+2 = 195; 195 mod 11 = 8 → '4'. Born 1880.
    "440524188001010014",
    # Suzhou, born 1990-03-07: 21+18+0+25+0+20+2+9+54+0+0+27+0+35+8+8+6 = 233;
    #   233 mod 11 = 2 → 'X'.
    "32050519900307123X",
]


@pytest.mark.parametrize("code", KNOWN_USCC)
def test_known_uscc_is_valid_by_module_and_reference(code: str) -> None:
    result = check_uscc(code, allow_pilot=False)
    assert result == IdentifierCheck(valid=True, normalized=code, kind="uscc")
    assert ref_uscc_sum_ok(code)
    assert ref_org_ok(code[8:17])
    assert uscc_check_char(code[:17]) == code[17]
    assert org_code_check_char(code[8:16]) == code[16]
    assert result.division == code[2:8] == admin_division(code)


@pytest.mark.parametrize("number", KNOWN_RESIDENT_IDS)
def test_known_resident_id_is_valid_by_module_and_reference(number: str) -> None:
    result = check_resident_id(number)
    assert result == IdentifierCheck(valid=True, normalized=number, kind="resident_id")
    assert ref_resident_ok(number)
    assert resident_id_check_char(number[:17]) == number[17]
    assert admin_division(number, kind="resident_id") == number[:6]


@pytest.mark.parametrize(
    ("raw", "expected", "kind"),
    [
        ("９１３５０１００Ｍ０００１００Ｙ４３", "91350100M000100Y43", "uscc"),  # full-width
        ("91350100m000100y43", "91350100M000100Y43", "uscc"),
        ("\u3000 91350100M000100Y43\t\n", "91350100M000100Y43", "uscc"),  # U+3000 space
        ("11010519491231002x", "11010519491231002X", "resident_id"),
        ("１１０１０５１９４９１２３１００２ｘ", "11010519491231002X", "resident_id"),
    ],
)
def test_normalisation(raw: str, expected: str, kind: str) -> None:
    assert normalize_identifier(raw) == expected
    result = check_uscc(raw) if kind == "uscc" else check_resident_id(raw)
    assert result.valid
    assert result.normalized == expected


# --- USCC properties ---------------------------------------------------------------------

divisions = st.one_of(
    st.sampled_from(SU_XI_CHANG), st.integers(0, 999_999).map(lambda n: f"{n:06d}")
)


@given(rng=st.randoms(use_true_random=False), division=divisions)
def test_generated_uscc_is_valid(rng: random.Random, division: str) -> None:
    code = make_uscc(rng, division)
    assert ref_uscc_sum_ok(code)
    assert ref_org_ok(code[8:17])
    result = check_uscc(code, allow_pilot=False)
    assert result.valid
    assert result.issues == ()
    assert not result.pilot_tolerated
    assert admin_division(code, kind="uscc") == division


@given(first17=st.text(alphabet=USCC_ALPHABET, min_size=17, max_size=17))
def test_uscc_check_char_agrees_with_reference(first17: str) -> None:
    assert ref_uscc_sum_ok(first17 + uscc_check_char(first17))


@given(body=st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=8, max_size=8))
def test_org_code_check_char_agrees_with_reference(body: str) -> None:
    assert ref_org_ok(body + org_code_check_char(body))


@given(first17=st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_resident_id_check_char_agrees_with_reference(first17: str) -> None:
    assert ref_resident_ok(first17 + resident_id_check_char(first17))


@settings(max_examples=500)
@given(code=st.text(alphabet=USCC_ALPHABET, min_size=18, max_size=18))
def test_uscc_verdict_agrees_with_reference_on_any_code_of_the_alphabet(code: str) -> None:
    result = check_uscc(code, allow_pilot=False)
    assert result.valid == (
        code[2:8].isdigit() and ref_org_ok(code[8:17]) and ref_uscc_sum_ok(code)
    )


@settings(max_examples=500)
@given(
    first17=st.text(alphabet="0123456789", min_size=17, max_size=17),
    last=st.sampled_from("0123456789X"),
)
def test_resident_id_check_agrees_with_reference_on_any_digits(first17: str, last: str) -> None:
    number = first17[:6] + "19900101" + first17[14:17] + last  # a real birth date
    result = check_resident_id(number, today=date(2025, 1, 1))
    assert result.valid == ref_resident_ok(number)


def substitution_is_tolerated(original: str, position: int, char: str) -> bool:
    """Exactly when the documented pilot rule tolerates this one-character substitution."""
    mutated = original[:position] + char + original[position + 1 :]
    return mutated[2:8].isdigit() and ref_org_ok(mutated[8:17])


@settings(max_examples=40, deadline=None)
@given(rng=st.randoms(use_true_random=False), division=divisions)
def test_every_single_substitution_fails_except_documented_pilot_tolerance(
    rng: random.Random, division: str
) -> None:
    code = make_uscc(rng, division)
    for position in range(18):
        for char in USCC_ALPHABET.replace(code[position], ""):
            mutated = code[:position] + char + code[position + 1 :]
            strict = check_uscc(mutated, allow_pilot=False)
            assert not strict.valid, (position, char)
            assert "uscc.check_digit" in strict.issue_codes
            assert not ref_uscc_sum_ok(mutated)  # a substitution always breaks mod 31

            lenient = check_uscc(mutated)
            tolerated = substitution_is_tolerated(code, position, char)
            assert lenient.pilot_tolerated is tolerated, (position, char)
            assert lenient.valid is tolerated, (position, char)
            if tolerated:
                assert lenient.issue_codes == ("uscc.pilot_check_digit",)
            else:
                assert "uscc.pilot_check_digit" not in lenient.issue_codes

            # The rule's consequences, spelled out position by position.
            if position == 17:  # check character: always a tolerated pilot shape
                assert tolerated
            elif position == 16:  # org code check character: always caught
                assert not tolerated
                assert "uscc.org_code_check" in lenient.issue_codes
            elif position >= 8:  # org body: caught unless the values differ by 11k
                differ = ref_org_value(char) - ref_org_value(code[position])
                assert tolerated is (differ % 11 == 0)
            elif 2 <= position <= 7:  # division: a letter is caught, a digit is not
                assert tolerated is char.isdigit()
            else:  # authority and category: no table to catch them
                assert tolerated


@settings(max_examples=40, deadline=None)
@given(rng=st.randoms(use_true_random=False))
def test_adjacent_transpositions_fail_the_strict_check(rng: random.Random) -> None:
    code = make_uscc(rng)
    for position in range(17):
        swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
        if swapped != code:
            assert not check_uscc(swapped, allow_pilot=False).valid, position


@given(
    rng=st.randoms(use_true_random=False),
    position=st.integers(0, 17),
    char=st.sampled_from("IOSVZ-*#é丁"),
)
def test_character_outside_alphabet_is_a_charset_error(
    rng: random.Random, position: int, char: str
) -> None:
    code = make_uscc(rng)
    mutated = code[:position] + char + code[position + 1 :]
    for allow_pilot in (True, False):
        result = check_uscc(mutated, allow_pilot=allow_pilot)
        assert not result.valid
        assert result.issue_codes == ("uscc.charset",)
        assert str(position + 1) in result.issues[0].message


@given(rng=st.randoms(use_true_random=False))
def test_generated_pilot_code_is_flagged_not_dropped(rng: random.Random) -> None:
    code = make_pilot_uscc(rng)
    result = check_uscc(code)
    assert result.valid
    assert result.pilot_tolerated
    assert result.issue_codes == ("uscc.pilot_check_digit",)
    assert result.division == "320500"
    strict = check_uscc(code, allow_pilot=False)
    assert not strict.valid
    assert strict.issue_codes == ("uscc.check_digit",)


def test_org_code_and_uscc_check_both_wrong_is_invalid_and_names_both() -> None:
    # Valid base 91320500MA1Q2R3T3A; position 17 '3' → '4' breaks GB 11714, and the USCC
    # check 'A' no longer matches either.
    result = check_uscc("91320500MA1Q2R3T4A")
    assert not result.valid
    assert not result.pilot_tolerated
    assert result.issue_codes == ("uscc.org_code_check", "uscc.check_digit")


def test_division_with_letter_is_invalid_even_with_matching_check_char() -> None:
    first17 = "913205A0MA1Q2R3T3"
    code = first17 + uscc_check_char(first17)
    result = check_uscc(code)
    assert not result.valid
    assert result.issue_codes == ("uscc.admin_division",)


@pytest.mark.parametrize(
    ("raw", "length"),
    [("", 0), ("   ", 0), ("91350100M000100Y4", 17), ("91350100M000100Y433", 19)],
)
def test_wrong_length(raw: str, length: int) -> None:
    result = check_uscc(raw)
    assert not result.valid
    assert result.issue_codes == ("uscc.length",)
    assert f"got {length}" in result.issues[0].message


# --- arbitrary input never raises --------------------------------------------------------


def assert_consistent(result: IdentifierCheck, raw: str) -> None:
    assert isinstance(result, IdentifierCheck)
    assert result.normalized == normalize_identifier(raw)
    if result.pilot_tolerated:
        assert result.valid
        assert result.issue_codes == ("uscc.pilot_check_digit",)
    else:
        assert result.valid is (result.issues == ())
    for issue in result.issues:
        assert issue.code.startswith(f"{result.kind}.")
        assert issue.message


@settings(max_examples=300)
@given(raw=st.text())
def test_arbitrary_text_never_raises(raw: str) -> None:
    for allow_pilot in (True, False):
        assert_consistent(check_uscc(raw, allow_pilot=allow_pilot), raw)
    assert_consistent(check_resident_id(raw), raw)
    with contextlib.suppress(ValueError):
        admin_division(raw)


# Near-misses reach the deeper checks that random unicode rarely does.
near_miss = st.text(alphabet=USCC_ALPHABET + "Xx０９ＡIOZ \u3000", min_size=15, max_size=20)


@settings(max_examples=300)
@given(raw=near_miss)
def test_near_miss_text_never_raises_and_agrees_with_reference(raw: str) -> None:
    result = check_uscc(raw, allow_pilot=False)
    assert_consistent(result, raw)
    code = result.normalized
    if len(code) == 18 and all(char in REF_USCC_CHARS for char in code):
        expected = ref_uscc_sum_ok(code) and ref_org_ok(code[8:17]) and code[2:8].isdigit()
        assert result.valid is expected
    number = check_resident_id(raw)
    assert_consistent(number, raw)


def test_very_long_and_odd_inputs() -> None:
    for raw in ("9" * 1_000_000, "\x00" * 18, "\ufdfa", "ß" * 9, "\U0001f600" * 18):
        assert not check_uscc(raw).valid
        assert not check_resident_id(raw).valid


def test_other_scripts_digits_are_not_digits() -> None:
    arabic_indic = "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X"  # the GB 11643 example in Arabic-Indic digits
    result = check_resident_id(arabic_indic)
    assert not result.valid
    assert result.issue_codes == ("resident_id.charset",)


# --- resident identity numbers -----------------------------------------------------------


@given(
    rng=st.randoms(use_true_random=False),
    division=divisions,
    birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2024, 12, 31)),
)
def test_generated_resident_id_is_valid(rng: random.Random, division: str, birth: date) -> None:
    number = make_resident_id(rng, division, birth)
    assert ref_resident_ok(number)
    assert number[6:14] == birth.strftime("%Y%m%d")
    result = check_resident_id(number, today=date(2025, 1, 1))
    assert result.valid
    assert result.division == division


@settings(max_examples=60, deadline=None)
@given(rng=st.randoms(use_true_random=False))
def test_every_single_character_corruption_of_a_resident_id_fails(rng: random.Random) -> None:
    number = make_resident_id(rng)
    for position in range(18):
        others = ("0123456789X" if position == 17 else "0123456789").replace(number[position], "")
        for char in others:
            mutated = number[:position] + char + number[position + 1 :]
            result = check_resident_id(mutated)
            assert not result.valid, (position, char)
            assert not ref_resident_ok(mutated)
            assert "resident_id.check_digit" in result.issue_codes


def with_check(first17: str) -> str:
    return first17 + resident_id_check_char(first17)


@pytest.mark.parametrize(
    ("birth", "code"),
    [
        ("19990229", "resident_id.birth_date"),  # 1999 is not a leap year
        ("19001329", "resident_id.birth_date"),  # month 13
        ("19900100", "resident_id.birth_date"),  # day 0
        ("19900431", "resident_id.birth_date"),  # 31 April
        ("00000101", "resident_id.birth_date"),  # year 0 does not exist
        ("20250102", "resident_id.birth_date_future"),  # the day after "today" below
    ],
)
def test_bad_birth_dates_fail_even_with_a_correct_check_digit(birth: str, code: str) -> None:
    number = with_check(f"320500{birth}123")
    result = check_resident_id(number, today=date(2025, 1, 1))
    assert not result.valid
    assert result.issue_codes == (code,)


def test_leap_day_and_today_are_real_birth_dates() -> None:
    assert check_resident_id(with_check("32050020000229123"), today=date(2025, 1, 1)).valid
    assert check_resident_id(with_check("32050020250101123"), today=date(2025, 1, 1)).valid


def test_resident_id_shape_errors() -> None:
    assert check_resident_id("110105491231002").issue_codes == ("resident_id.length",)
    assert "15-digit" in check_resident_id("110105491231002").issues[0].message
    assert check_resident_id("1101051949123100XX").issue_codes == ("resident_id.charset",)
    assert check_resident_id("91350100M000100Y43").issue_codes == ("resident_id.charset",)


def test_results_never_echo_a_resident_id() -> None:
    number = "11010519491231002X"
    for raw in (number, number[:-1] + "1", "11010519490231002X", "1101051949123100"):
        result = check_resident_id(raw)
        assert number[:17] not in repr(result)
        assert "19490231" not in repr(result)
        for issue in result.issues:
            assert "1949" not in issue.message


# --- helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helper", "bad"),
    [
        (uscc_check_char, "9135010"),
        (uscc_check_char, "91350100M000100I4"),  # I is not in the alphabet
        (org_code_check_char, "M000100"),
        (org_code_check_char, "M000100y"),  # helpers take normalised input
        (resident_id_check_char, "1101051949123100"),
        (resident_id_check_char, "1101051949123100X"),
    ],
)
def test_helpers_reject_malformed_input(helper: object, bad: str) -> None:
    assert callable(helper)
    with pytest.raises(ValueError, match="expected"):
        helper(bad)


def test_admin_division_infers_the_kind() -> None:
    assert admin_division("91320500MA1Q2R3T3A") == "320500"
    assert admin_division("32050519900307123X") == "320505"
    assert admin_division("91320500MA1Q2R3T3B") == "320500"  # pilot code: flagged, usable
    with pytest.raises(ValueError, match="not a valid"):
        admin_division("91320500MA1Q2R3T4A")


def test_admin_division_refuses_an_ambiguous_all_digit_string() -> None:
    # A real-looking ID number (Suzhou, born 1974-08-14) that also passes every USCC check.
    both = "320500197408145953"
    assert ref_resident_ok(both)
    assert ref_uscc_sum_ok(both)
    assert ref_org_ok(both[8:17])
    with pytest.raises(ValueError, match="pass kind"):
        admin_division(both)
    assert admin_division(both, kind="resident_id") == "320500"
    assert admin_division(both, kind="uscc") == "050019"


def test_admin_division_prefers_a_full_id_reading_over_a_pilot_uscc_reading() -> None:
    # About one ID number in eleven also reads as a pilot USCC: its digits 9–17 pass
    # GB 11714 by chance. The full resident-ID reading wins.
    rng = random.Random(3)
    number = next(
        n for n in (make_resident_id(rng) for _ in range(10_000)) if check_uscc(n).pilot_tolerated
    )
    assert ref_org_ok(number[8:17])
    assert admin_division(number) == number[:6]
