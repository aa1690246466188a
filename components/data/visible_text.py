"""Whether a text shows anything: a text of only whitespace and invisible characters counts as empty.

``str.strip`` removes whitespace but not zero-width or format characters, so a text made only of U+200B (zero
width space), U+FEFF (byte order mark), U+2060 (word joiner) or a variation selector passed the blank checks,
was embedded, and could even "match". Invisible here means: whitespace, a control or format character (Unicode
categories Cc, Cf), a separator (Zs, Zl, Zp), a Default_Ignorable_Code_Point of Unicode's
DerivedCoreProperties (Hangul fillers, variation selectors, tags, ...), or U+2800 BRAILLE PATTERN BLANK.

Standard library only: the torch-free serving code and the data validation of the pipelines share it.

Example:
    >>> is_blank("\\u200b\\ufeff \\u2060"), is_blank("card\\u200b")
    (True, False)
"""

from __future__ import annotations

import unicodedata

INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Default_Ignorable_Code_Point (Unicode 15.1 DerivedCoreProperties.txt) and U+2800, inclusive ranges
INVISIBLE_RANGES = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
                    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
                    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
BLANK_MESSAGE = "the text is only whitespace or invisible characters (e.g. U+200B ZERO WIDTH SPACE)"


def is_invisible(char: str) -> bool:
    """True for a character that shows nothing on its own (see the module docstring)."""
    if char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES:
        return True
    point = ord(char)
    return any(low <= point <= high for low, high in INVISIBLE_RANGES)


def is_blank(text: str) -> bool:
    """True when ``text`` is empty or every character of it is invisible."""
    return all(is_invisible(char) for char in text)
