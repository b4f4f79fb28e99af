"""The mails auth sends (lockout, password link), as TransactionalMessages; dynamic values travel as variables."""

from __future__ import annotations

import json
from datetime import datetime

from mailblast.v1 import events_pb2

_FROM_NAME = "mailblast"


def lockout(
    organization_id: int, user_id: int, login: str, email: str, locked_until: datetime, mail_from: str
) -> events_pb2.TransactionalMessage:
    """Tell a user their account was locked after repeated failed logins, and until when."""
    until = locked_until.strftime("%Y-%m-%d %H:%M UTC")
    text = (
        "{{ login }} 様\n\nログインの失敗が続いたため、アカウントを {{ until }} までロックしました。"
        "心当たりがない場合は管理者に連絡してください。\n\n"
        "Your mailblast account {{ login }} was locked until {{ until }} after repeated failed logins. "
        "If this was not you, tell your administrator.\n"
    )
    return _message(
        organization_id,
        f"auth.lockout.{user_id}.{int(locked_until.timestamp())}",
        email,
        login,
        "auth.lockout",
        "アカウントをロックしました / Your mailblast account was locked",
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
) -> events_pb2.TransactionalMessage:
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
    variables: dict,
    mail_from: str,
) -> events_pb2.TransactionalMessage:
    html = "<p>" + text.replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"
    message = events_pb2.TransactionalMessage(
        organization_id=organization_id,
        message_key=key,
        to_address=to_address,
        to_name=to_name,
        content=events_pb2.MessageContent(
            from_name=_FROM_NAME, from_address=mail_from, subject=subject, text_body=text, html_body=html
        ),
        variables_json=json.dumps(variables, ensure_ascii=False),
        category=category,
    )
    message.created_at.GetCurrentTime()
    return message
