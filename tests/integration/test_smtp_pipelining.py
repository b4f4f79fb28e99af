"""SMTP delivery into a server that offers PIPELINING (RFC 2920): the benchmark's sink, with STARTTLS."""

from __future__ import annotations

import email
import email.policy

import pytest

from bench.sink import Counts, start_sink
from services.sender.ledger import DeliveryStatus
from services.sender.smtp import SmtpDelivery


def _message(n: int) -> bytes:
    body = "".join(f"line {i} of message {n}\r\n" for i in range(200)) + ".starts with a dot\r\n.\r\n"
    return f"From: a@example.com\r\nTo: b@example.net\r\nSubject: m{n}\r\n\r\n{body}".encode()


@pytest.mark.asyncio
async def test_pipelined_transactions_reuse_one_session(tls_files, tmp_path):
    # Five messages to a pipelining server: each goes as MAIL, RCPT and DATA in one write, all over one
    # STARTTLS session; a refused recipient (550, then 450) is reported as such and the session goes on
    # (RSET) to deliver the next message; the server receives each message exactly as it was given.
    cert, key = tls_files
    counts = Counts(
        tmp_path, 1, {b"gone@example.net": b"550 5.1.1 no such user", b"busy@example.net": b"450 4.2.0 busy"}
    )
    server = await start_sink(0, str(cert), str(key), counts)
    port = server.sockets[0].getsockname()[1]
    delivery = SmtpDelivery(
        ehlo_name="sender.test", relay=("127.0.0.1", port), tls_required=True, tls_ca_file=str(cert)
    )
    try:
        results = []
        for n, recipient in enumerate(
            ["b@example.net", "gone@example.net", "c@example.net", "busy@example.net", "d@example.net"]
        ):
            results.append(await delivery.deliver("bounces@example.com", recipient, _message(n)))
    finally:
        await delivery.close()
        server.close()
    assert [r.status for r in results] == [
        DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.SENT,
    ]  # fmt: skip
    assert results[1].code == 550 and results[1].enhanced_status == "5.1.1"
    assert results[3].code == 450 and all(r.tls for r in results)
    assert counts.connections == 1
    assert counts.accepted == 3
    assert counts.pipelined == 5
    kept = sorted(tmp_path.glob("*.eml"))
    assert [path.read_bytes() for path in kept] == [_message(0), _message(2), _message(4)]
    parsed = email.message_from_bytes(kept[1].read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "m2" and parsed.get_content().endswith(".starts with a dot\r\n.\r\n")
