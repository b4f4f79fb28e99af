"""The SMTP sink of the tests is the development catcher itself, and the DSNs receiving servers send back."""

from email.utils import make_msgid

from dev.catcher import CaughtMessage, SmtpCatcher
from dev.tls import make_self_signed

SmtpSink = SmtpCatcher


def dsn_for(original: bytes, rcpt: str, verp: str) -> bytes:
    """A Postfix-style RFC 3464 report saying `rcpt` does not exist, returning the original's headers."""
    headers = original.split(b"\r\n\r\n", 1)[0].decode()
    boundary = "dsn-boundary-1"
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.net')}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


__all__ = ["CaughtMessage", "SmtpSink", "dsn_for", "make_self_signed"]
