"""The development catcher (also the tests' SMTP sink) records TLS and programmed refusals."""

import ssl

import aiosmtplib
import pytest


async def test_starttls_message_is_recorded_with_tls_flag(smtp_sink, client_tls_context: ssl.SSLContext):
    # A client that upgrades with STARTTLS is seen as a TLS delivery, with its bytes intact.
    await aiosmtplib.send(
        b"Subject: hi\r\n\r\nbody\r\n",
        sender="a@example.org",
        recipients=["b@example.net"],
        hostname="127.0.0.1",
        port=smtp_sink.port,
        start_tls=True,
        tls_context=client_tls_context,
    )
    [message] = await smtp_sink.wait_for(1, timeout=10)
    assert message.tls and message.tls_version.startswith("TLS")
    assert message.rcpt_tos == ["b@example.net"]
    assert b"Subject: hi" in message.data


async def test_programmed_refusal_then_acceptance(smtp_sink, client_tls_context: ssl.SSLContext):
    # A recipient refused with 450 on its first offer is accepted on the second.
    smtp_sink.reply = lambda addr, seen: "450 4.2.0 try later" if seen == 0 else None
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await aiosmtplib.send(
            b"Subject: x\r\n\r\nx\r\n", sender="a@example.org", recipients=["c@example.net"],
            hostname="127.0.0.1", port=smtp_sink.port, start_tls=True, tls_context=client_tls_context,
        )  # fmt: skip
    await aiosmtplib.send(
        b"Subject: x\r\n\r\nx\r\n", sender="a@example.org", recipients=["c@example.net"],
        hostname="127.0.0.1", port=smtp_sink.port, start_tls=True, tls_context=client_tls_context,
    )  # fmt: skip
    assert [m.rcpt_tos for m in await smtp_sink.wait_for(1, timeout=10)] == [["c@example.net"]]
