import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchard.kit.phone import InvalidPhone, mask_phone, normalize_phone


@pytest.mark.parametrize("raw", ["13812341234", "138 1234 1234", "+86 138-1234-1234", "008613812341234",
                                 "+8613812341234", " 138-1234-1234 "])
def test_chinese_mobiles_in_any_format_normalise_to_e164(raw):
    assert normalize_phone(raw) == "+8613812341234"


@pytest.mark.parametrize("raw", ["", "12345", "abc", "1381234123", "+86 000 0000 0000", "1" * 50])
def test_invalid_phones_are_refused(raw):
    with pytest.raises(InvalidPhone):
        normalize_phone(raw)


def test_foreign_numbers_keep_their_country():
    assert normalize_phone("+1 650-253-0000") == "+16502530000"


@pytest.mark.parametrize(("e164", "masked"), [("+8613812341234", "138****1234"), ("+16502530000", "+1 650***0000")])
def test_masking_keeps_three_leading_and_four_trailing_digits(e164, masked):
    assert mask_phone(e164) == masked


def _full_parser(raw: str) -> str | None:
    """What libphonenumber alone says, bypassing the mobile fast path."""
    import phonenumbers

    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=3000, deadline=None)
@given(prefix=st.sampled_from(["", "+86", "86", "+85", "0"]), digits=st.from_regex(r"1[0-9]{10}", fullmatch=True))
def test_mobile_fast_path_agrees_with_libphonenumber(prefix, digits):
    raw = prefix + digits
    normalize_phone.cache_clear()
    try:
        ours = normalize_phone(raw)
    except InvalidPhone:
        ours = None
    assert ours == _full_parser(raw)
