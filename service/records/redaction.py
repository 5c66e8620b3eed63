"""Redaction of record bodies and training examples: e-mail addresses, phone numbers and long
digit runs replaced by placeholders (``LORAGATE_RECORD_BODIES=redacted``, the export's
``redact``)."""

from __future__ import annotations

import re

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# A candidate run of digits: an optional "+" or "(", digits with at most one space, hyphen or
# parenthesis between them, not inside a word, a decimal or a longer token.
DIGIT_RUN = re.compile(r"(?<![\w.+\-/])(?:\+|\()?\d(?:(?:[ \-]|\) ?)?\d)*(?![\w]|\.\d)")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MIN_DIGITS = 9
MAX_PHONE_DIGITS = 15


def _redact_digits(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < MIN_DIGITS or ISO_DATE.match(text):
        return text
    groups = len(re.findall(r"\d+", text))
    phone_like = text.startswith(("+", "(")) or ")" in text or groups >= 3
    if phone_like and digits <= MAX_PHONE_DIGITS:
        return "<phone>"
    return "<number>"


def redact(text: str) -> str:
    """E-mail addresses, phone numbers and long digit runs replaced by placeholders."""
    return DIGIT_RUN.sub(_redact_digits, EMAIL.sub("<email>", text))
