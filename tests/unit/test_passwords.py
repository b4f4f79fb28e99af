"""Password strength by zxcvbn: which passwords pass, why the others are refused, and the reasons in Japanese."""

from __future__ import annotations

from pathlib import Path

import pytest
import zxcvbn.feedback
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from services.auth import passwords
from services.common.errors import InvalidArgument

CATALOG = Path(__file__).resolve().parents[2] / "services/gateway/translations/ja/LC_MESSAGES/messages.po"


def zxcvbn_feedback_texts() -> set[str]:
    """Every warning and suggestion zxcvbn can give: the gettext calls of its feedback module."""
    return {message for _, message, _, _ in extract_from_file("python", zxcvbn.feedback.__file__, keywords={"_": None})}


def refusal(
    password: str, login: str = "alice", email: str = "alice@example.org", org: str = "Acme"
) -> InvalidArgument:
    """The refusal of a password, which must be refused."""
    with pytest.raises(InvalidArgument) as refused:
        passwords.check_new(password, login, email, org)
    return refused.value


def test_every_reason_zxcvbn_can_give_has_a_japanese_text():
    # A Japanese console shows each part of a refusal from the catalog: zxcvbn's warnings and
    # suggestions (all of them, as its installed version writes them) and our own must all be there.
    with CATALOG.open("rb") as fh:
        catalog = read_po(fh)
    texts = zxcvbn_feedback_texts()
    assert len(texts) >= 25 and "Add another word or two. Uncommon words are better." in texts
    missing = sorted(t for t in texts | {passwords.PERSONAL_WARNING} if t not in catalog or not catalog[t].string)
    assert missing == [], "add these to the Japanese catalog"
    for text in texts:
        # Each is formatted with the refusal's values: a % of its own would break that.
        assert "%" not in text and "%" not in catalog[text].string, text


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("aaaaaaaa", 'Repeats like "aaa" are easy to guess.'),
        ("abcdefgh", 'Sequences like "abc" or "6543" are easy to guess.'),
        ("mailblast", passwords.PERSONAL_WARNING),
        ("password", "This is a top-10 common password."),
        ("asdfghjkl;", "Straight rows of keys are easy to guess."),
        ("Alice2024", passwords.PERSONAL_WARNING),
        ("acme2024", passwords.PERSONAL_WARNING),
        ("19841225", "Dates are often easy to guess."),
        ("P@ssw0rd", "Predictable substitutions like '@' instead of 'a' don't help very much."),
        ("drowssap1", "Reversed words aren't much harder to guess."),
    ],
)
def test_guessable_passwords_are_refused_with_zxcvbn_s_reasons(password: str, reason: str):
    # Each is refused below score 3, and the refusal says why: our template with the score, then
    # zxcvbn's warning and suggestions as parts of their own (the console translates each part).
    refused = refusal(password)
    assert refused.templates[0] == "password is too easy to guess (strength %(score)s of 4, %(minimum)s needed): "
    assert refused.params["score"] < passwords.MIN_SCORE == refused.params["minimum"] == 3
    assert reason in refused.templates
    allowed = zxcvbn_feedback_texts() | {passwords.PERSONAL_WARNING, " "}
    assert set(refused.templates[1:]) <= allowed
    assert str(refused).startswith(
        f"password is too easy to guess (strength {refused.params['score']} of 4, 3 needed): "
    )


def test_the_user_s_own_words_count_as_known():
    # The login, the email address (whole, local part and domain), the organisation's words and the
    # product's name are what an attacker tries first: built on them, a password is weak.
    for password, login, email, org in [
        ("hanakoyamada", "hanako", "yamada@example.jp", "Example"),
        ("sakuratrading", "bob", "bob@example.org", "Sakura Trading"),
        ("blastmail2024", "bob", "bob@example.org", "Example"),
    ]:
        assert passwords.PERSONAL_WARNING in refusal(password, login, email, org).templates, password


@pytest.mark.parametrize(
    "password",
    ["violet-otter-47-lantern", "しずかなもりのおくでふくろうがないている", "Tr0ub4dor&3-x", "k" + "9Xq#2mZ!vR" * 12],
)
def test_hard_passwords_pass_normalised(password: str):
    # Long, uncommon ones pass (only the first 72 characters are scored, as zxcvbn advises).
    assert passwords.check_new(password, "alice", "alice@example.org", "Acme") == passwords.normalize(password)


def test_length_and_identity_rules_come_first():
    # Too short, too long and "your own login" keep their plain reasons.
    assert "shorter than 8" in str(refusal("Ab1!xyz"))
    assert "longer than 128" in str(refusal("x" * 129))
    assert "login or email" in str(refusal("alice@example.org"))
