import pytest

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
