"""PII scrubbing: each pattern, with checksum-valid vs invalid numbers, in English and Chinese."""

from __future__ import annotations

from collections import Counter

import pytest

from seekforge.data.pii import PIIConfig, card_valid, cn_id_valid, luhn_valid, scrub


def s(text: str, **kw) -> str:
    return scrub(text, PIIConfig(**kw))


def test_email():
    assert s("Write to jane.doe+news@example.co.uk today") == "Write to [EMAIL] today"
    assert s("请发邮件到 zhang_san@163.com 联系我们") == "请发邮件到 [EMAIL] 联系我们"
    assert s("not an email: a@b or @handle") == "not an email: a@b or @handle"


@pytest.mark.parametrize("phone", ["13812345678", "138-1234-5678", "138 1234 5678", "+86 139 1234 5678",
                                   "+8615012345678"])
def test_mainland_china_mobile(phone):
    assert s(f"联系电话：{phone}。") == "联系电话：[PHONE]。"


@pytest.mark.parametrize("phone", ["+1 (555) 123-4567", "555-123-4567", "(555) 123-4567", "+44 20 7946 0958",
                                   "010-12345678"])
def test_other_phone_formats(phone):
    assert s(f"call {phone} now") == "call [PHONE] now"


def test_numbers_that_are_not_phones_survive():
    for text in ("in 2023-10-12 we sold 1234567 units", "order 12345678901234567890",
                 "version 1.2.3", "12812345678 is not a mobile (second digit 2)"):
        assert s(text) == text, text


def test_ipv4():
    assert s("server at 192.168.1.254, port 80") == "server at [IP_ADDRESS], port 80"
    assert s("not an ip: 999.1.1.1 or 1.2.3") == "not an ip: 999.1.1.1 or 1.2.3"


def test_chinese_resident_id_checksum():
    valid = "11010519491231002X"  # the GB 11643-1999 example number
    assert cn_id_valid(valid) and cn_id_valid(valid.lower())
    assert not cn_id_valid("110105194912310021")  # wrong check character
    assert s(f"身份证号：{valid}，请核对。") == "身份证号：[ID_NUMBER]，请核对。"
    assert s("身份证号：110105194912310021。") == "身份证号：110105194912310021。"
    assert s("编号 110105194913310029") == "编号 110105194913310029"  # month 13: not a date


def test_payment_cards_luhn():
    for number in ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"):
        assert card_valid(number), number
        assert s(f"card: {number}.") == "card: [CARD_NUMBER].", number
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert not card_valid("4111 1111 1111 1112")  # Luhn fails
    assert not card_valid("9111111111111119")  # Luhn ok, no issuer uses prefix 9
    assert s("tracking 4111 1111 1111 1112") == "tracking 4111 1111 1111 1112"


def test_counts_and_switches():
    counts: Counter = Counter()
    scrub("a@b.com, c@d.org, 13812345678", PIIConfig(), counts)
    assert counts == {"email": 2, "phone": 1}
    assert s("a@b.com 13812345678", email=False) == "a@b.com [PHONE]"
    assert s("a@b.com", enabled=False) == "a@b.com"
    assert scrub("a@b.com", PIIConfig(placeholders={"email": "<mail>"})) == "<mail>"
