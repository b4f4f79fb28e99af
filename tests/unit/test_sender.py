"""The sender's domain: templates, MIME, header safety, DKIM through OpenSSL, outcomes and backoff."""

from __future__ import annotations

import base64
import email
import email.policy
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed

from services.common import verp
from services.sender.compose import Composer
from services.sender.dkim import DkimSigner, SigningKey, dns_record, load_key, relaxed_body
from services.sender.ledger import DeliveryStatus, enhanced_status, reply_result, status_for
from services.sender.mime import MessageProblem, Sender, build_message
from services.sender.render import TemplateCache, TemplateProblem, recipient_fields
from services.sender.retry import backoff_seconds, given_up, next_retry_delay
from tests.support.dkim_verify import ED25519, EVERY_VERIFIER, RSA, passing, verify_everywhere

KEY = b"k" * 32


def _message(**overrides) -> bytes:
    values = dict(
        sender=Sender("山田 商店", "news@shop.example.com", "replies@shop.example.com"),
        to_address="taro@example.net",
        to_name="Taro",
        subject="「件名テスト」",
        text="こんにちは\n",
        html="<p>こんにちは</p>",
        message_id="<mb.1.2.3.abcdefghij@mail.example.com>",
        unsubscribe_url="https://mail.example.com/u/token",
    )
    values.update(overrides)
    return build_message(**values)


def test_unsubscribe_token_round_trip_and_forgery():
    # The List-Unsubscribe token names organisation, campaign and subscriber, is URL-safe, and a
    # changed id, another key or garbage reads as nothing.
    ref = verp.RecipientRef(3, 42, 1007)
    token = verp.unsubscribe_token(KEY, ref)
    assert all(c.isalnum() or c in "-_." for c in token)
    assert verp.parse_unsubscribe_token(KEY, token) == ref
    assert verp.parse_unsubscribe_token(KEY, token.replace(".1007.", ".1008.")) is None
    assert verp.parse_unsubscribe_token(KEY, token.replace("42", "042", 1)) is None
    assert verp.parse_unsubscribe_token(b"x" * 32, token) is None
    assert verp.parse_unsubscribe_token(KEY, "nonsense") is None


def test_templates_fill_fields_escape_html_and_compile_once():
    # Personal fields come from name, email and the attributes; HTML is escaped, text and subject not;
    # a missing field renders empty; a campaign is compiled once per content.
    cache = TemplateCache()
    content = cache.get(1, "Hi {{ name }} {{ missing.deeper }}", "{{ company }}", "<b>{{ company }}</b>")
    assert cache.get(1, "Hi {{ name }} {{ missing.deeper }}", "{{ company }}", "<b>{{ company }}</b>") is content
    rendered = content.render(recipient_fields("a@example.net", "Ann", '{"company": "A&B <Co>", "name": "x"}'))
    assert rendered.subject == "Hi Ann "
    assert rendered.text == "A&B <Co>"
    assert rendered.html == "<b>A&amp;B &lt;Co&gt;</b>"
    with pytest.raises(TemplateProblem, match="template error in the HTML body"):
        cache.get(2, "s", "t", "{{ name ")
    with pytest.raises(TemplateProblem, match="template error"):
        # The sandbox refuses reaching into Python internals.
        cache.get(3, "{{ name.__class__.__mro__[1].__subclasses__() }}", "", "").render({"name": "n"})


def test_message_is_utf8_multipart_with_encoded_japanese_subject():
    # The bytes are 7-bit clean, parse back to the same subject, sender and bodies, and carry the
    # RFC 8058 one-click unsubscribe headers.
    data = _message()
    assert data.isascii() and b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == "「件名テスト」"
    assert parsed["From"].addresses[0].display_name == "山田 商店"
    assert parsed["Reply-To"] == "replies@shop.example.com"
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content() == "こんにちは\n"
    assert parsed.get_body(("html",)).get_content() == "<p>こんにちは</p>\n"
    assert parsed["List-Unsubscribe"] == "<https://mail.example.com/u/token>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not parsed.defects


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"subject": "Hi\r\nBcc: evil@attacker.example"}, "subject"),
        ({"subject": "Hi\nBcc: evil@attacker.example"}, "subject"),
        ({"to_name": "Eve\rBcc: evil@attacker.example"}, "recipient name"),
        ({"to_address": "a@example.net\r\nBcc: evil@attacker.example"}, "recipient address"),
        ({"to_address": "not an address"}, "recipient address"),
    ],
)
def test_header_injection_is_refused(overrides, field):
    # A CR/LF anywhere a header value comes from fails the message naming the field: no extra header.
    with pytest.raises(MessageProblem, match=field):
        _message(**overrides)


@pytest.mark.parametrize(
    ("sender", "field"),
    [
        (Sender("Shop\r\nBcc: evil@attacker.example", "news@shop.example.com"), "From name"),
        (Sender("Shop", "news@shop.example.com\r\nBcc: x@y.example"), "From address"),
        (Sender("Shop", "news@shop.example.com", "r@shop.example.com\nBcc: x@y.example"), "Reply-To"),
    ],
)
def test_campaign_sender_injection_is_refused(sender, field):
    # The campaign's own From and Reply-To are checked the same way.
    with pytest.raises(MessageProblem, match=field):
        sender.check()


def _keys() -> tuple[SigningKey, SigningKey]:
    return (
        SigningKey("mail.example.com", "rsa1", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        SigningKey("mail.example.com", "ed1", ed25519.Ed25519PrivateKey.generate()),
    )


def test_dkim_signatures_verify_with_dkimpy_mail_dkim_and_opendkim(dns_server):
    # Signed through OpenSSL, the rsa-sha256 and ed25519-sha256 signatures verify with dkimpy, and with
    # Mail::DKIM (rsa-sha256) and OpenDKIM (ed25519-sha256), each taking the keys from the DNS records
    # published on the loopback server; each key alone signs a message that verifies; a changed body
    # breaks both signatures everywhere.
    rsa_key, ed_key = _keys()
    dns_server.add_zone("mail.example.com")
    dns_server.add_txt("rsa1._domainkey.mail.example.com", dns_record(rsa_key))
    dns_server.add_txt("ed1._domainkey.mail.example.com", dns_record(ed_key))

    signed = DkimSigner([rsa_key, ed_key]).sign(_message(text="tab\there  and  spaces   \n\n\n"))
    rsa_only = DkimSigner([rsa_key]).sign(_message())
    ed_only = DkimSigner([ed_key]).sign(_message())
    both, by_rsa, by_ed = verify_everywhere([signed, rsa_only, ed_only], dns_server)
    assert passing(both) == EVERY_VERIFIER, both
    assert passing(by_rsa) == {("dkimpy", RSA), ("Mail::DKIM", RSA)}, by_rsa
    assert passing(by_ed) == {("dkimpy", ED25519), ("OpenDKIM", ED25519)}, by_ed
    h = b"h=from : to : subject : date : message-id : reply-to : mime-version : content-type :"
    assert h in signed.replace(b"\r\n ", b" ")
    tampered = signed.replace(base64.b64encode("こんにちは".encode())[:8], b"AAAAAAAA")
    assert tampered != signed
    [checks] = verify_everywhere([tampered], dns_server)
    assert len(checks) == 4 and passing(checks) == set(), checks


def test_dkim_key_files(tmp_path):
    # Keys load from PEM (RSA, Ed25519) and from dkimpy's base64 Ed25519 seed.
    rsa_key, ed_key = _keys()
    pem = tmp_path / "r.pem"
    pem.write_bytes(
        rsa_key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    assert load_key("d.example", "s", pem).algorithm == b"rsa-sha256"
    seed = tmp_path / "ed.key"
    seed.write_bytes(
        base64.b64encode(
            ed_key.private_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        )
    )
    assert dns_record(load_key("d.example", "s", seed)) == dns_record(ed_key)


def test_relaxed_body_matches_dkimpy():
    # The fast body canonicalisation gives dkimpy's exact bytes, including the odd cases.
    rnd = random.Random(7)
    bodies = [bytes(rnd.choice(b"ab \t\r\n") for _ in range(rnd.randint(0, 14))) for _ in range(5000)]
    bodies += [b"", b"\r\n", b"a  b\t\r\n\r\n", b"line \r\nline\r\n"]
    assert [relaxed_body(b) for b in bodies] == [Relaxed.canonicalize_body(b) for b in bodies]


def test_composer_names_the_recipient_everywhere():
    # The envelope sender, Message-ID and unsubscribe link all name the same recipient, signed.
    composer = Composer(
        key=KEY,
        return_path_domain="bounces.example.com",
        message_id_domain="mail.example.com",
        unsubscribe_url="https://mail.example.com/u/",
        signer=DkimSigner([]),
    )
    ref = verp.RecipientRef(1, 2, 3)
    content = TemplateCache().get(2, "Hi {{ name }}", "t", "")
    prepared = composer.prepare(
        ref=ref,
        content=content,
        sender=Sender("S", "s@shop.example.com"),
        email="a@example.net",
        name="A",
        attributes_json="",
    )
    assert verp.parse_return_path(KEY, prepared.envelope_from) == ref
    assert verp.parse_message_id(KEY, prepared.message_id) == ref
    parsed = email.message_from_bytes(prepared.data, policy=email.policy.default)
    assert parsed["Subject"] == "Hi A" and parsed.get_content_type() == "text/plain"
    assert verp.parse_unsubscribe_token(KEY, parsed["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]) == ref


def test_outcomes_and_enhanced_status():
    # 2xx is sent, 4xx deferred, 5xx rejected; the RFC 3463 status is read from the reply.
    assert [status_for(c) for c in (250, 421, 450, 550, 554)] == [
        DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.DEFERRED, DeliveryStatus.REJECTED,
        DeliveryStatus.REJECTED,
    ]  # fmt: skip
    assert enhanced_status("5.1.1 <x@y>: no such user") == "5.1.1"
    assert enhanced_status("no such user") == ""
    result = reply_result(452, "4.2.2 mailbox full", tls=True)
    assert (result.status, result.enhanced_status, result.tls) == (DeliveryStatus.DEFERRED, "4.2.2", True)


def test_backoff_doubles_to_the_cap_and_stops_at_give_up():
    # Retries back off exponentially by delivery count, never beyond the cap nor past the give-up age.
    assert [backoff_seconds(n, 60, 3600) for n in (1, 2, 3, 7, 8, 100)] == [60, 120, 240, 3600, 3600, 3600]
    assert next_retry_delay(3, age=100, base=60, cap=3600, give_up=150) == pytest.approx(50.05)
    assert not given_up(10, 11) and given_up(11, 11)


def test_relaxed_headers_match_dkimpy():
    # The fast header canonicalisation gives dkimpy's exact pairs for folded, tabbed and plain values.
    from services.sender.dkim import relaxed_headers

    rnd = random.Random(11)
    headers = [[b"Subject ", b" a  b\t c \r\n"], [b"X", b" folded\r\n\tline \r\n"], [b"To", b" x@y\r\n"]]
    headers += [
        [b"H", bytes(rnd.choice(b"ab \t\r\n") for _ in range(rnd.randint(0, 12))) + b"\r\n"] for _ in range(3000)
    ]
    assert relaxed_headers(headers) == [tuple(pair) for pair in Relaxed.canonicalize_headers(headers)]


def test_data_payload_matches_aiosmtplib():
    # The DATA payload (dot-stuffing by bytes.replace) equals aiosmtplib's own regex-based preparation,
    # for CRLF messages, leading and inner dots, and messages with stray CR or LF that need normalising.
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from services.sender.smtp import data_payload

    rnd = random.Random(5)
    messages = [bytes(rnd.choice(b"a.\r\n") for _ in range(rnd.randint(0, 30))) for _ in range(5000)]
    messages += [b"", b".", b".\r\n", b"a\r\n.\r\n..b\r\n", _message()]
    for message in messages:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
        assert data_payload(message) == expected, message


def test_composed_messages_are_crlf_as_their_type_says():
    # A composed message (CrlfMessage: the SMTP client skips the line-end check) truly has CRLF line ends
    # only, whatever the text and HTML bodies say (LF, CR, CRLF, lines starting with a dot, long lines),
    # so its DATA payload is the one a plain bytes copy of it gets.
    from services.sender.mime import CrlfMessage
    from services.sender.smtp import data_payload

    key = SigningKey("mail.example.com", "sel", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    composer = Composer(
        key=KEY, return_path_domain="bounces.example.com", message_id_domain="mail.example.com",
        unsubscribe_url="https://mail.example.com/u/", signer=DkimSigner([key]),
    )  # fmt: skip
    bodies = [".dot\nline\r\n.\rend", "a" * 2000 + "\n.\n", "日本語\r\n.行\n", "plain\n"]
    for n, body in enumerate(bodies):
        content = TemplateCache().get(n, "{{ name }}", body + "{{ name }}", "<p>" + body + "</p>")
        prepared = composer.prepare(
            ref=verp.RecipientRef(1, 2, n), content=content, sender=Sender("S", "news@shop.example.com"),
            email="taro@example.net", name=".Taro", attributes_json="",
        )  # fmt: skip
        assert type(prepared.data) is CrlfMessage
        data = bytes(prepared.data)
        assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
        assert data_payload(prepared.data) == data_payload(data)


def test_transactional_categories_withheld_from_suppressed_addresses():
    # Account mail and double opt-in confirmations reach even a suppressed address; other kinds do not.
    from services.sender.decisions import checks_suppression

    assert not checks_suppression("auth.password_reset")
    assert not checks_suppression("auth.lockout")
    assert not checks_suppression("lists.confirm")
    assert checks_suppression("campaigns.test")
    assert checks_suppression("lists.welcome")
    assert checks_suppression("")


def test_suppressed_outcome_is_reported_and_bounce_ignores_it():
    # A suppressed recipient is reported as DELIVERY_OUTCOME_SUPPRESSED; the bounce service makes no bounce of it.
    import datetime as dt

    from mailblast.v1 import events_pb2

    from services.bounce.consumers import bounces_of
    from services.sender.convert import delivery_report
    from services.sender.ledger import DeliveryStatus, Outcome

    outcome = Outcome(
        organization_id=1, campaign_id=2, subscriber_id=3, email="x@example.net", status=DeliveryStatus.SUPPRESSED,
        message_id="", smtp_code=0, smtp_message="suppressed: manual", enhanced_status="", tls=False,
        attempt=0, counts_attempt=False, occurred_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    report = delivery_report([outcome])
    assert report.events[0].outcome == events_pb2.DELIVERY_OUTCOME_SUPPRESSED
    assert DeliveryStatus.SUPPRESSED.final
    assert bounces_of(report) == []
