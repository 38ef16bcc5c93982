"""PII scrubbing: replace personal identifiers with typed placeholders.

Covered: e-mail addresses, phone numbers (international ``+CC …``, North-American 3-3-4,
mainland-China mobile ``1[3-9]`` + 9 digits with optional ``+86``, Chinese landlines
``0xx(x)-xxxxxxx(x)``), IPv4 addresses, Chinese resident ID numbers (18 characters, the check
character validated per GB 11643-1999) and payment card numbers (13–19 digits with a known
issuer prefix, validated with the Luhn checksum).

Checksums matter: an 18-digit order number or a 16-digit tracking code is not PII, and
scrubbing them would delete information for nothing. US-centric regex sets (Dolma's phone
pattern is 3-3-4 digits) miss the Chinese formats entirely.

Placeholders are plain bracketed words (``[EMAIL]``), not ``<|…|>`` strings that could collide
with a tokenizer's special tokens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import regex


@dataclass
class PIIConfig:
    enabled: bool = True
    email: bool = True
    phone: bool = True
    ip: bool = True
    cn_id: bool = True
    card: bool = True
    placeholders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))


DEFAULT_PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "ip": "[IP_ADDRESS]",
    "cn_id": "[ID_NUMBER]",
    "card": "[CARD_NUMBER]",
}

# --------------------------------------------------------------------------- patterns

_EMAIL = regex.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])"
)

# 18-character resident ID: 6-digit region (first digit 1-9), birth date YYYYMMDD (1800-2099),
# 3-digit sequence, check character 0-9/X.
_CN_ID = regex.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])"
)
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"  # check character for (weighted sum mod 11) = 0..10

# Card numbers: 13-19 digits, optionally in groups separated by single spaces or hyphens.
_CARD = regex.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
# Issuer prefixes (IIN ranges) of the major networks; UnionPay (62) matters for Chinese text.
_CARD_PREFIX = regex.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|6011|64[4-9]|65|62|35)")

_PHONE_PATTERNS = [
    # mainland-China mobile: 1[3-9]x xxxx xxxx, optional +86/0086 prefix and separators.
    r"(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}",
    # international: +CC then 6-14 more digits in groups (spaces, dots, hyphens, parentheses).
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}",
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567
    r"(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}",
    # Chinese landline with area code: 010-12345678, 0755-1234567
    r"0\d{2,3}-\d{7,8}",
]
_PHONE = regex.compile(r"(?<![\w+])(?:" + "|".join(_PHONE_PATTERNS) + r")(?!\d)")

_IPV4 = regex.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)"
)

# --------------------------------------------------------------------------- validators


def cn_id_valid(s: str) -> bool:
    """GB 11643-1999 check character of an 18-character resident ID number."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _CN_ID_WEIGHTS))
    return _CN_ID_CHECK[total % 11] == s[17].upper()


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) checksum used by every payment card number."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_valid(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


def _phone_valid(s: str) -> bool:
    n = sum(ch.isdigit() for ch in s)
    return 7 <= n <= 15  # E.164 allows at most 15 digits


# --------------------------------------------------------------------------- scrubbing


def scrub(text: str, cfg: PIIConfig, counts: Counter | None = None) -> str:
    """Replace PII in ``text`` with placeholders; ``counts[type]`` += replacements made."""
    if not cfg.enabled:
        return text
    ph = {**DEFAULT_PLACEHOLDERS, **cfg.placeholders}

    def sub(pattern: regex.Pattern, kind: str, valid=None) -> None:
        nonlocal text

        def repl(m: regex.Match) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            if counts is not None:
                counts[kind] += 1
            return ph[kind]

        text = pattern.sub(repl, text)

    # Order matters: e-mails first (their digits must not become phones); IDs before cards and
    # phones (an ID's digits contain valid-looking card and phone numbers).
    if cfg.email and "@" in text:
        sub(_EMAIL, "email")
    # Every number pattern below needs a run of 7+ digits (possibly separated): one cheap scan
    # skips the four expensive ones on most documents.
    if not _DIGIT_RUN.search(text):
        return text
    if cfg.cn_id:
        sub(_CN_ID, "cn_id", cn_id_valid)
    if cfg.card:
        sub(_CARD, "card", card_valid)
    if cfg.phone:
        sub(_PHONE, "phone", _phone_valid)
    if cfg.ip and "." in text:
        sub(_IPV4, "ip")
    return text


_DIGIT_RUN = regex.compile(r"\d(?:[ ().+-]{0,2}\d){6}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
