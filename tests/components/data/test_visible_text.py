"""Which texts count as empty: whitespace and invisible characters only (zero-width, format, fillers)."""

import pytest

from components.data.visible_text import is_blank

# (id, text, blank?)
CASES = [
    ("empty", "", True),
    ("spaces_tabs_newlines", " \t\n\r ", True),
    ("zero_width_space", "\u200b", True),
    ("bom_word_joiner_zwj_zwnj", "\ufeff\u2060\u200d\u200c", True),
    ("soft_hyphen_and_nbsp", "\u00ad\u00a0", True),
    ("bidi_marks_and_controls", "\u200e\u200f\u202a\u202e\u2066\u0000\u0007", True),
    ("variation_selectors_and_tags", "\ufe0f\U000e0100\U000e0041", True),
    ("hangul_fillers_and_braille_blank", "\u3164\u115f\uffa0\u2800", True),
    ("ideographic_and_line_separators", "\u3000\u2028\u2029\u0085", True),
    ("a_letter", "a", False),
    ("word_between_zero_widths", "\u200bcard lost\u200b", False),
    ("emoji_with_selector", "\u2764\ufe0f", False),
    ("digit", "7", False),
    ("combining_accent_on_letter", "e\u0301", False),
    ("cjk", "\u5361", False),
]


@pytest.mark.parametrize("text,blank", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_is_blank(text, blank):
    assert is_blank(text) is blank
