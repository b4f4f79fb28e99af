"""The mails auth sends (lockout, password link), as Notices; dynamic values travel as variables.

A Notice becomes a TransactionalMessage for the senders in mailer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

_FROM_NAME = "mailblast"


@dataclass(frozen=True)
class Notice:
    """One mail to one person: its idempotency key, its texts (Jinja2) and the values they refer to."""

    organization_id: int
    message_key: str
    to_address: str
    to_name: str
    category: str
    from_name: str
    from_address: str
    subject: str
    text_body: str
    html_body: str
    variables: dict[str, str]


# What a lock stops, by the kind of client it holds for (see services/auth/security.py), in both languages.
_LOCKED_CLIENTS = {
    "unknown": (
        "ログインの失敗が続いたため、これまでログインに使ったことのないブラウザーからの {{ login }} へのログインを "
        "{{ until }} まで止めています。以前ログインしたブラウザーからは、引き続きログインできます。",
        "After repeated failed logins, logging in to {{ login }} from browsers that have not logged in to it "
        "before is blocked until {{ until }}. Browsers you have logged in with before can still log in.",
    ),
    "device": (
        "以前 {{ login }} でログインしたブラウザーの 1 つでログインの失敗が続いたため、そのブラウザーからのログインを "
        "{{ until }} まで止めています。ほかのブラウザーには影響ありません。",
        "After repeated failed logins from one of the browsers that logged in to {{ login }} before, logging in "
        "from that browser is blocked until {{ until }}. Other browsers are not affected.",
    ),
    "session": (
        "{{ login }} のログイン中のセッションで、パスワードの確認に何度も失敗したため、そのセッションでの確認を "
        "{{ until }} まで止めています。",
        "A logged-in session of {{ login }} gave a wrong password repeatedly, so that session cannot check "
        "passwords until {{ until }}.",
    ),
}


def lockout(
    organization_id: int,
    user_id: int,
    login: str,
    email: str,
    locked_until: datetime,
    mail_from: str,
    clients: str = "unknown",
) -> Notice:
    """Tell a user that logins were locked after repeated failures: for which browsers, and until when."""
    until = locked_until.strftime("%Y-%m-%d %H:%M UTC")
    japanese, english = _LOCKED_CLIENTS[clients]
    text = (
        f"{{{{ login }}}} 様\n\n{japanese}"
        "心当たりがない場合は管理者に連絡してください。\n\n"
        f"{english} If this was not you, tell your administrator.\n"
    )
    return _message(
        organization_id,
        f"auth.lockout.{user_id}.{clients}.{int(locked_until.timestamp())}",
        email,
        login,
        "auth.lockout",
        "ログインを一時停止しました / Logins to your mailblast account were paused",
        text,
        {"login": login, "until": until},
        mail_from,
    )


def password_link(
    organization_id: int,
    user_id: int,
    token_id: int,
    login: str,
    email: str,
    url: str,
    expires_at: datetime,
    invite: bool,
    mail_from: str,
    self_service: bool = False,
) -> Notice:
    """A single-use link to set a password: an invitation, an admin-requested or a self-service reset."""
    until = expires_at.strftime("%Y-%m-%d %H:%M UTC")
    if invite:
        subject = "mailblast へのご招待 / You are invited to mailblast"
        lead = "{{ login }} 様\n\nmailblast のアカウントが作成されました。次のリンクからパスワードを設定してください"
        lead_en = "An account {{ login }} was created for you on mailblast. Set your password here"
    else:
        subject = "パスワードの再設定 / Reset your mailblast password"
        lead = (
            "{{ login }} 様\n\n管理者がパスワードの再設定を依頼しました。"
            "次のリンクから新しいパスワードを設定してください"
        )
        lead_en = "An administrator asked for your mailblast password ({{ login }}) to be reset. Set a new one here"
        if self_service:
            lead = (
                "{{ login }} 様\n\nパスワードの再設定が依頼されました。"
                "心当たりがない場合はこのメールを無視してください。次のリンクから新しいパスワードを設定できます"
            )
            lead_en = (
                "Someone asked to reset the mailblast password of {{ login }}; if it was not you, ignore this mail. "
                "Set a new one here"
            )
    text = (
        f"{lead}（{{{{ until }}}} まで有効、1 回限り）:\n{{{{ url }}}}\n\n"
        f"{lead_en} (valid once, until {{{{ until }}}}):\n{{{{ url }}}}\n"
    )
    category = "auth.invite" if invite else "auth.password_reset"
    return _message(
        organization_id,
        f"{category}.{user_id}.{token_id}",
        email,
        login,
        category,
        subject,
        text,
        {"login": login, "url": url, "until": until},
        mail_from,
    )


def _message(
    organization_id: int,
    key: str,
    to_address: str,
    to_name: str,
    category: str,
    subject: str,
    text: str,
    variables: dict[str, str],
    mail_from: str,
) -> Notice:
    html = "<p>" + text.replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"
    return Notice(
        organization_id=organization_id,
        message_key=key,
        to_address=to_address,
        to_name=to_name,
        category=category,
        from_name=_FROM_NAME,
        from_address=mail_from,
        subject=subject,
        text_body=text,
        html_body=html,
        variables=variables,
    )
