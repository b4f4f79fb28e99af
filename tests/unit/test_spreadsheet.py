"""The one rule every CSV the product writes follows for cells a spreadsheet would run as formulas."""

from __future__ import annotations

from services.common.spreadsheet import formula_safe, formula_safe_row


def test_formula_starts_are_quoted_plain_numbers_and_other_text_are_not():
    # OWASP's list (= + - @ tab CR) gets a leading quote; a cell that is only a number keeps its sign,
    # so number fields stay numbers; Japanese text (even full-width ＝) and non-text values pass as they are.
    for formula in ("=1+1", "+81 90-1234-5678", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1", "-", "-1+2"):
        assert formula_safe(formula) == "'" + formula
    for plain in ("-5", "+3.25", "-1e+20", "-.5", "12", "山田 花子", "＝大阪", "", "'=already text", "a=b"):
        assert formula_safe(plain) == plain
    assert formula_safe_row([7, None, -3, "=x"]) == [7, None, -3, "'=x"]
