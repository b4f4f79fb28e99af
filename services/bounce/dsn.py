"""Reading returned mail: RFC 3464 DSNs, ARF feedback reports, auto-replies and MTAs' plain-text bounces.

`parse_bounce` works on the message alone and says, per failed recipient, who it was, what the server
said and how to count it; deciding which of our subscribers it was (attribution) is a separate step.
"""

from __future__ import annotations

import email
import json
import re
from dataclasses import dataclass, field, replace
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses

from flufl.bounce import all_failures

from services.bounce.classify import (
    COMPLAINT,
    SOFT,
    Verdict,
    classify,
    failure_status,
    find_command,
    find_reply_code,
    find_status,
    prefer_status,
)
from services.bounce.providers import hosts_named, provider_of

BOUNCE = "bounce"
FEEDBACK_REPORT = "feedback-report"
AUTO_REPLY = "auto-reply"
DELIVERED_DSN = "delivered-dsn"
NOT_BOUNCE = "not-bounce"

# Actions (RFC 3464 2.3.3, and "deliverable" of RFC 3461 address tests) that say the message did not fail.
# "delayed" is not among them: a delay is a soft event (the recipient is counted, never suppressed).
_NOT_FAILED_ACTIONS = frozenset({"delivered", "relayed", "expanded", "deliverable"})
# Reasons a status code alone gives loosely (Sisimai retries them): the notice may say more.
_VAGUE_REASONS = frozenset({"undefined", "onhold", "systemerror", "securityerror", "networkerror", "syntaxerror"})


@dataclass(frozen=True)
class RecipientResult:
    """What happened to one recipient according to the returned message."""

    email: str
    kind: str  # hard, soft or complaint
    reason: str
    status: str = ""
    action: str = ""
    diagnostic: str = ""
    smtp_code: int = 0
    remote_mta: str = ""


@dataclass(frozen=True)
class BounceReport:
    """A parsed returned message: what kind of report it is and its failed recipients."""

    kind: str
    recipients: tuple[RecipientResult, ...] = ()
    message_id: str = ""
    date: str = ""
    # Message-IDs of the returned original (its Message-ID, In-Reply-To, References), for attribution.
    original_message_ids: tuple[str, ...] = field(default_factory=tuple)
    # The To addresses of the returned original: our copy went to exactly one of our subscribers.
    original_recipients: tuple[str, ...] = ()
    # What was wrong with the message as MIME or as a DSN, and how it was read anyway (for the record).
    problems: tuple[str, ...] = ()


_ADDRESS = re.compile(
    r"(?<![\w.+=-])([a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+)",
    re.IGNORECASE,
)
_SYSTEM_LOCALPARTS = re.compile(
    r"^(?:mailer-daemon|postmaster|mail-daemon|maildaemon|root|daemon|noreply|no-reply|nobody|"
    r"bounces?|abuse|majordomo|listserv|mailerdaemon|mail\.delivery\.system|mdaemon|"
    r"microsoftexchange[0-9a-f]*|fbl|feedback|arf)$",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(
    r"mailer-?daemon|post_?master|mail ?delivery|delivery ?subsystem|mail administrator|"
    r"system administrator|microsoftexchange|mdaemon|mail ?system|notification",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|notification|has failed|failed|problem|report)|"
    r"returned mail|returned to sender|failure notice|mail delivery|non[- ]?delivery|could not be delivered|"
    r"delivery unsuccessful|mail (?:failure|not delivered|could not)|rejected|bounce|not delivered|"
    r"nondeliverable|unzustellbar|warning: message|message status|failed delivery|delivery error|"
    r"permanent error|error sending|message you sent|unable to deliver|problem with your",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:re:\s*)?(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|out of (?:the )?office|"
    r"away (?:from|until)|vacation|abwesen|absence|autoreply|auto:|on leave|r[ée]ponse automatique)",
    re.IGNORECASE,
)
# Where the quoted original starts in a plain-text bounce: the notice ends there.
_ORIGINAL_STARTS = re.compile(
    r"^[ \t]*(?:-{2,}|={2,}|\*{2,})?[ \t]*(?:"
    r"below this line is a copy|this is a copy of the|"
    # "The original message was received at ..." opens Sendmail's notice: only a heading counts here.
    r"(?:the )?original message(?: follows| as received| is attached)?[ \t]*[:.\-=*]*[ \t]*$|"
    r"(?:-{2,}|={2,}|\*{2,})[ \t]*(?:the )?original message|"
    r"returned message|unsent message|undelivered message|"
    r"headers? of (?:the )?(?:original|your) message|copy of (?:the )?(?:original|your) message|"
    r"message text follows|your message (?:reads|follows)|the header of the original|"
    r"content-type: message/rfc822|original headers?|(?:message )?headers follow)"
    r"|^(?:received|return-path|x-original-to|delivered-to|dkim-signature): ",
    re.IGNORECASE | re.MULTILINE,
)
_HEADERISH_LINE = re.compile(
    r"^\s*(?:message-id|in-reply-to|references|received|by|with|id|from|sender|reply-to|return-path|"
    r"x-[\w-]+|dkim-signature|list-[\w-]+|date|subject)\s*[:\s]",
    re.IGNORECASE,
)


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        inner = part.get_payload()
        if isinstance(inner, list):
            return "\n\n".join(m.as_string() if isinstance(m, Message) else str(m) for m in inner)
        return str(inner or "")
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _unquoted(text: str) -> str:
    """A notice forwarded as a quotation ("> " before most lines) as the notice itself."""
    lines = text.replace("\r\n", "\n").split("\n")
    filled = [line for line in lines if line.strip()]
    if len(filled) < 4 or sum(line.lstrip().startswith(">") for line in filled) * 2 < len(filled):
        return text
    return "\n".join(re.sub(r"^[ \t]*> ?", "", line) for line in lines)


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"&nbsp;|&#160;", " ", text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _fields(block: str) -> list[tuple[str, str]]:
    """RFC 822-style fields of one block, continuation lines unfolded."""
    out: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and out:
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, _, value = line.partition(":")
            out.append((name.strip().lower(), value.strip()))
    return out


def _address_of(value: str) -> str:
    """The address of a DSN field such as 'rfc822; <user@example.com>'."""
    _, _, value = value.rpartition(";") if ";" in value else ("", "", value)
    match = _ADDRESS.search(value)
    return match.group(1).lower() if match else ""


def _strip_type(value: str) -> str:
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


@dataclass
class _Parts:
    delivery_status: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    original_headers: list[Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _collect(msg: Message, parts: _Parts) -> None:
    ctype = msg.get_content_type()
    if ctype in ("message/delivery-status", "message/global-delivery-status", "text/delivery-status"):
        parts.delivery_status.append(_decoded_text(msg))
    elif ctype == "message/feedback-report":
        parts.feedback.append(_decoded_text(msg))
    elif ctype in ("message/rfc822", "message/global"):
        inner = msg.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            parts.original_headers.append(inner[0])
        elif isinstance(inner, str):
            parts.original_headers.append(email.message_from_string(inner, policy=compat32))
    elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
        parts.original_headers.append(email.message_from_string(_decoded_text(msg), policy=compat32))
    elif msg.is_multipart():
        for sub in msg.get_payload():
            if isinstance(sub, Message):
                _collect(sub, parts)
    elif ctype.startswith("multipart/"):
        # Its boundary never occurs (cut or rewritten on the way): the parts are only text now.
        parts.problems.append(
            f"{ctype} without its boundary {msg.get_boundary() or '(none given)'!r}: its parts were read as plain text"
        )
        parts.texts.append(_decoded_text(msg))
    elif ctype == "text/plain" or (ctype.startswith("text/") and ctype != "text/html"):
        parts.texts.append(_unquoted(_decoded_text(msg)))
    elif ctype == "text/html":
        parts.texts.append(_strip_html(_decoded_text(msg)))


def _message_ids(headers: list[Message], msg: Message) -> tuple[str, ...]:
    ids: list[str] = []
    for h in headers:
        for name in ("Message-ID", "In-Reply-To", "References"):
            ids.extend(str(v) for v in h.get_all(name, []))
    for name in ("In-Reply-To", "References"):
        ids.extend(str(v) for v in msg.get_all(name, []))
    return tuple(ids)


def _dsn_recipients(blocks_text: str, notice: str, hosts: tuple[str, ...] = ()) -> list[RecipientResult]:
    blocks = [b for b in re.split(r"\n[ \t]*\n", blocks_text.replace("\r\n", "\n")) if b.strip()]
    per_message: dict[str, str] = {}
    results: list[RecipientResult] = []
    pending: list[tuple[str, str, str, str, str]] = []
    for block in blocks:
        fields = _fields(block)
        names = {n for n, _ in fields}
        if "final-recipient" not in names and "original-recipient" not in names:
            if not pending:
                per_message.update(dict(fields))
            continue
        values = dict(fields)
        recipient = _address_of(values.get("final-recipient", "")) or _address_of(values.get("original-recipient", ""))
        if not recipient and values.get("original-recipient"):
            recipient = _address_of(values["original-recipient"])
        diagnostic = _strip_type(values.get("diagnostic-code", ""))
        if re.match(r"(?i)\s*x-unix\s*;", values.get("diagnostic-code", "")):
            # A local program's exit status, not a server's reply: the type is what says so.
            diagnostic = values["diagnostic-code"].strip()
        status = find_status(values.get("status", ""))
        action = values.get("action", "").strip().lower().split()[0] if values.get("action") else ""
        remote = _strip_type(values.get("remote-mta", "") or per_message.get("reporting-mta", ""))
        pending.append((recipient, status, action, diagnostic, remote))
    others = tuple(p[0] for p in pending)
    for recipient, status, action, diagnostic, remote in pending:
        about = _notice_about(notice, recipient, others)
        results.append(_result(recipient, status, action, diagnostic, remote, about, hosts))
    return results


def _notice_about(notice: str, recipient: str, others: tuple[str, ...] = ()) -> str:
    """The lines of the human-readable notice that speak of one recipient (or all of it).

    From the start of the line naming the recipient (a transcript's ">>> RCPT To:<...>" counts) to the
    line naming the next of the other recipients, so one recipient's reason is not read as another's.
    """
    if not recipient:
        return notice
    lowered = notice.lower()
    at = lowered.find(recipient.lower())
    if at < 0:
        return notice
    start = notice.rfind("\n", 0, at) + 1
    end = min(at + 800, len(notice))
    line_end = lowered.find("\n", at)
    for other in others:
        if other and other.lower() != recipient.lower():
            found = lowered.find(other.lower(), line_end if line_end > 0 else at)
            if 0 <= found < end:
                end = notice.rfind("\n", 0, found) + 1 or found
    return notice[start:end]


_TRANSCRIPT_REPLY = re.compile(r"^[ \t]*<<<[ \t]?(.*)$", re.MULTILINE)


def _whole_reply(diagnostic: str, context: str) -> str:
    """The server's whole multi-line reply when the transcript has more of it than the DSN field.

    Sendmail cuts Diagnostic-Code at the first line of a multi-line reply ("550-5.7.1 ..."); its
    transcript ("<<< 550-5.7.1 ...", "<<< 550 5.7.1 ...") keeps every line.
    """
    head = " ".join(diagnostic.split())
    if not head or not re.match(r"[245]\d\d-", head):
        return diagnostic
    lines = [" ".join(m.group(1).split()) for m in _TRANSCRIPT_REPLY.finditer(context or "")]
    for at, line in enumerate(lines):
        if line and (line.startswith(head) or head.startswith(line)):
            reply = [line]
            for more in lines[at + 1 :]:
                if more[:3] != line[:3]:
                    break
                reply.append(more)
                if more[3:4] == " ":
                    break
            joined = " ".join(reply)
            return joined if len(joined) > len(head) else diagnostic
    return diagnostic


def _result(
    recipient: str, status: str, action: str, diagnostic: str, remote: str, context: str, hosts: tuple[str, ...] = ()
) -> RecipientResult:
    diagnostic = _whole_reply(diagnostic, context)
    code = find_reply_code(diagnostic)
    text = diagnostic if diagnostic.strip() else context
    # The command the server was answering: the diagnostic's transcript first, else the notice's.
    command = find_command(diagnostic) or find_command(context)
    domain = recipient.rpartition("@")[2]
    # The refusing host first (Remote-MTA, then hosts the reply names), then the notice's, the bounce's
    # first hop, the recipient's domain: the reporting MTA's own provider is not the refusing one's.
    provider = next(
        (
            found
            for found in (
                provider_of((remote,), ""),
                provider_of(hosts_named(text), ""),
                provider_of(hosts_named(context), ""),
                provider_of(hosts, ""),
                provider_of((), domain),
            )
            if found
        ),
        "",
    )
    verdict = classify(status, text, code, command, action, provider)
    if action == "delayed":
        # Still being retried by the reporting MTA: whatever the reason, the address is not gone yet.
        verdict = Verdict(SOFT, verdict.reason)
    # A vague or missing diagnostic: let the notice's words about this recipient sharpen the verdict.
    if verdict.reason in _VAGUE_REASONS and context and context != text:
        sharper = classify(status, f"{text}\n{context}", code, command, action, provider)
        if sharper.reason not in ("undefined", "onhold"):
            verdict = sharper if action != "delayed" else Verdict(SOFT, sharper.reason)
    return RecipientResult(
        email=recipient,
        kind=verdict.kind,
        reason=verdict.reason,
        status=status if status.startswith("2.") else failure_status(prefer_status(status, text)),
        action=action,
        diagnostic=" ".join(diagnostic.split())[:1000],
        smtp_code=code or find_reply_code(text),
        remote_mta=remote,
    )


def _notice_text(parts: _Parts) -> str:
    text = "\n".join(parts.texts).replace("\r\n", "\n")
    match = _ORIGINAL_STARTS.search(text)
    return text[: match.start()] if match and match.start() > 40 else text


def _inline_original(parts: _Parts) -> Message | None:
    """The headers of an original message quoted as text after the notice, if any."""
    text = "\n".join(parts.texts).replace("\r\n", "\n")
    match = _ORIGINAL_STARTS.search(text)
    if not match:
        return None
    rest = text[match.start() :]
    if not re.match(r"(?i)(?:received|return-path|x-original-to|delivered-to|dkim-signature): ", rest):
        rest = rest.split("\n", 1)[1] if "\n" in rest else ""
    return email.message_from_string(rest.lstrip("\n"), policy=compat32)


def _excluded_addresses(msg: Message, parts: _Parts) -> set[str]:
    excluded: set[str] = set()
    for name in ("From", "To", "Sender", "Return-Path", "Reply-To", "Cc", "Delivered-To"):
        for _, addr in getaddresses([str(v) for v in msg.get_all(name, [])]):
            excluded.add(addr.lower())
    for h in parts.original_headers:
        for name in ("From", "Sender", "Return-Path", "Reply-To"):
            for _, addr in getaddresses([str(v) for v in h.get_all(name, [])]):
                excluded.add(addr.lower())
    return excluded


# Plain-text bounces: the line that names a failed recipient, in the shapes the common MTAs write.
_RECIPIENT_LINES = (
    # qmail, Postfix without DSN, Courier: "<user@host>:" at the start of a line.
    re.compile(r"^[ \t]*<([^<>\s]+@[^<>\s]+)>:?", re.MULTILINE),
    # Exim, Sendmail, many others: the address alone, indented, on its own line.
    re.compile(r"^[ \t]*<?([^<>\s:;,()\"]+@[^<>\s:;,()\"]+?)>?[ \t]*(?:\(.*\))?[ \t]*:?[ \t]*$", re.MULTILINE),
    # Any address in angle brackets.
    re.compile(r"<([^<>\s:;,()\"]+@[^<>\s:;,()\"]+)>"),
    # "... to <user@host>" / "RCPT TO:<user@host>" / "recipient: user@host"
    re.compile(
        r"(?<![\w-])(?:rcpt to:?|recipients?:|to:|for|address:|addressed to|delivery to|deliver to|"
        r"following address(?:es)?[^:\n]*:|mailbox|user)(?![\w-])"
        # The address ends at a separator, or at a full stop that ends the sentence.
        r"\s*<?([^<>\s:;,()\"]+@[^<>\s:;,()\"]+?)>?(?=[\s,;:)]|\.(?:\s|$)|$)",
        re.IGNORECASE,
    ),
)


def _text_recipients(notice: str, excluded: set[str]) -> list[str]:
    found: list[str] = []

    def usable(addr: str) -> bool:
        addr = addr.lower().strip(".")
        local = addr.split("@", 1)[0]
        return (
            bool(_ADDRESS.fullmatch(addr))
            and addr not in excluded
            and not _SYSTEM_LOCALPARTS.match(local)
            and addr not in found
        )

    for pattern in _RECIPIENT_LINES:
        for match in pattern.finditer(notice):
            addr = match.group(1).lower().strip(".")
            line_start = notice.rfind("\n", 0, match.start()) + 1
            line = notice[line_start : notice.find("\n", match.start()) % (len(notice) + 1)]
            if _HEADERISH_LINE.match(line) and "rcpt to" not in line.lower():
                continue
            if usable(addr):
                found.append(addr)
        if found:
            return found
    for match in _ADDRESS.finditer(notice):
        line_start = notice.rfind("\n", 0, match.start()) + 1
        if _HEADERISH_LINE.match(notice[line_start : match.start()] + " "):
            continue
        if usable(match.group(1)):
            found.append(match.group(1).lower().strip("."))
    return found


def _looks_like_bounce(msg: Message, notice: str) -> bool:
    sender = f"{msg.get('From', '')} {msg.get('Return-Path', '')}"
    subject = str(msg.get("Subject", ""))
    if _BOUNCE_SENDER.search(sender) or _BOUNCE_SUBJECT.search(subject):
        return True
    if str(msg.get("Return-Path", "")).strip() in ("<>", ""):
        return bool(re.search(r"deliver|undeliver|permanent|failed|rejected", notice, re.IGNORECASE))
    return False


def _is_auto_reply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).lower()
    if any(msg.get(h) for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation")):
        return True
    if str(msg.get("Precedence", "")).lower().strip() == "auto_reply":
        return True
    subject = str(msg.get("Subject", ""))
    return (auto.startswith("auto-replied") and not _BOUNCE_SUBJECT.search(subject)) or bool(
        _AUTO_REPLY_SUBJECT.search(subject)
    )


def _feedback_recipients(parts: _Parts, msg: Message) -> list[RecipientResult]:
    fields: dict[str, str] = {}
    recipients: list[str] = []
    for report in parts.feedback:
        for name, value in _fields(report.replace("\r\n", "\n")):
            fields.setdefault(name, value)
            # RFC 5965 3.2: Original-Rcpt-To may occur once per recipient of the reported message.
            if name in ("original-rcpt-to", "removal-recipient"):
                recipients.append(_address_of(value))
    if not any(recipients):
        for h in parts.original_headers:
            recipients.extend(_addresses_in(h.get_all("To", [])))
    diagnostic = fields.get("feedback-type", "abuse")
    # No address at all ("To: <Undisclosed Recipients>"): still a complaint about the VERP address it came to.
    return [
        RecipientResult(email=r, kind=COMPLAINT, reason="feedback", diagnostic=diagnostic)
        for r in (dict.fromkeys(r for r in recipients if r) or [""])
    ]


def _json_documents(texts: list[str]) -> list[dict]:
    """JSON objects carried as a message body, unwrapping an SNS envelope's "Message" string."""
    docs: list[dict] = []
    for text in texts:
        start = text.find("{")
        if start < 0 or text[:start].strip():
            continue
        # Sendmail breaks lines over 990 characters with "!" + newline + space: undo that first.
        body = re.sub(r"!\r?\n ", "", text[start:])
        try:
            doc = json.JSONDecoder(strict=False).raw_decode(body)[0]
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("Message"), str):
            try:
                doc = json.loads(doc["Message"], strict=False)
            except ValueError:
                continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


def _ses_notification(docs: list[dict]) -> tuple[str, list[RecipientResult]] | None:
    """An Amazon SES bounce or complaint notification (JSON, often inside an SNS envelope), if any."""
    for doc in docs:
        kind = str(doc.get("notificationType") or doc.get("eventType") or "").lower()
        if kind == "bounce" and isinstance(doc.get("bounce"), dict):
            bounce = doc["bounce"]
            transient = str(bounce.get("bounceType", "")).lower() == "transient"
            results = []
            for rcpt in bounce.get("bouncedRecipients") or []:
                if not isinstance(rcpt, dict) or not _address_of(str(rcpt.get("emailAddress", ""))):
                    continue
                result = _result(
                    _address_of(str(rcpt["emailAddress"])),
                    find_status(str(rcpt.get("status", ""))),
                    str(rcpt.get("action", "failed")).lower(),
                    _strip_type(str(rcpt.get("diagnosticCode", ""))),
                    str(bounce.get("reportingMTA", "")),
                    "",
                )
                if transient and result.kind == "hard":
                    # SES says the failure is temporary: never count it as a gone address.
                    result = replace(result, kind="soft")
                results.append(result)
            return BOUNCE, results
        if kind == "delivery" and isinstance(doc.get("delivery"), dict):
            delivery = doc["delivery"]
            response = str(delivery.get("smtpResponse", ""))
            delivered = [_address_of(str(r)) for r in delivery.get("recipients") or []]
            return DELIVERED_DSN, [
                RecipientResult(
                    email=e,
                    kind=SOFT,
                    reason="delivered",
                    status=find_status(response),
                    action="delivered",
                    diagnostic=response[:1000],
                    smtp_code=find_reply_code(response),
                    remote_mta=str(delivery.get("reportingMTA", "")),
                )
                for e in dict.fromkeys(delivered)
                if e
            ]
        if kind == "complaint" and isinstance(doc.get("complaint"), dict):
            complaint = doc["complaint"]
            feedback = str(complaint.get("complaintFeedbackType") or "abuse")
            emails = [_address_of(str(r.get("emailAddress", ""))) for r in complaint.get("complainedRecipients") or []]
            return FEEDBACK_REPORT, [
                RecipientResult(email=e, kind=COMPLAINT, reason="feedback", diagnostic=feedback)
                for e in dict.fromkeys(emails)
                if e
            ]
    return None


def _unsubscribe_request(msg: Message) -> list[RecipientResult]:
    """A mailbox provider's one-click unsubscribe sent by mail (List-Unsubscribe mailto): an opt-out."""
    subject = str(msg.get("Subject", "")).strip().lower()
    automatic = str(msg.get("Auto-Submitted", "")).lower().startswith("auto-")
    if not (
        str(msg.get("X-Apple-Unsubscribe", "")).strip().lower() == "true" or (automatic and subject == "unsubscribe")
    ):
        return []
    sender = [a.lower() for _, a in getaddresses([str(msg.get("From", ""))]) if a]
    return [RecipientResult(email=s, kind=COMPLAINT, reason="feedback", diagnostic="opt-out") for s in sender]


# Complaint loops that forward the reported message without an RFC 5965 feedback part (Microsoft's).
_COMPLAINT_SUBJECT = re.compile(r"^\s*complaint about message from\b", re.IGNORECASE)


# RFC 3464 per-recipient fields written out in a text part (a DSN whose MIME structure was lost).
_DSN_IN_TEXT = re.compile(
    r"^(?:final-recipient|original-recipient)[ \t]*:[ \t]*rfc822[ \t]*;", re.IGNORECASE | re.MULTILINE
)


def _first_hop(msg: Message) -> tuple[str, ...]:
    """The hosts of the returned message's oldest Received header: where the notice was written."""
    received = msg.get_all("Received", [])
    if not received:
        return ()
    oldest = " ".join(str(received[-1]).split())
    return tuple(h.lower() for h in re.findall(r"\b(?:from|by)\s+([a-z0-9.-]+\.[a-z]{2,})", oldest, re.IGNORECASE))


def _delivery_status_in_text(texts: list[str]) -> str:
    """The per-recipient DSN fields found in text parts, from the first such field on, or ''."""
    for text in texts:
        match = _DSN_IN_TEXT.search(text)
        if match:
            return text.replace("\r\n", "\n")[match.start() :]
    return ""


def parse_bounce(raw: bytes | str | Message) -> BounceReport:
    """Parse a returned message into its kind and per-recipient results (no attribution here).

    Never raises: a message that cannot be read at all is a not-bounce whose `problems` say why.
    """
    try:
        return _parse(raw)
    except Exception as exc:  # any input reaches here: none may stop the service or go unrecorded
        return BounceReport(NOT_BOUNCE, problems=(f"the message could not be read: {type(exc).__name__}: {exc}",))


def _parse(raw: bytes | str | Message) -> BounceReport:
    if isinstance(raw, Message):
        msg = raw
    elif isinstance(raw, bytes):
        msg = email.message_from_bytes(raw, policy=compat32)
    else:
        msg = email.message_from_string(raw, policy=compat32)
    parts = _Parts()
    _collect(msg, parts)
    base = {
        "message_id": str(msg.get("Message-ID", "") or "").strip(),
        "date": str(msg.get("Date", "") or "").strip(),
        "original_message_ids": _message_ids(parts.original_headers, msg),
        "original_recipients": tuple(
            dict.fromkeys(a for h in parts.original_headers for a in _addresses_in(h.get_all("To", [])))
        ),
        "problems": tuple(parts.problems),
    }
    first_hop = _first_hop(msg)
    if not parts.delivery_status:
        embedded = _delivery_status_in_text(parts.texts)
        if embedded:
            parts.delivery_status.append(embedded)
    report_type = (msg.get_param("report-type") or "") if msg.get_content_type() == "multipart/report" else ""
    if (
        parts.feedback
        or str(report_type).lower() == "feedback-report"
        or (_COMPLAINT_SUBJECT.match(str(msg.get("Subject", ""))) and parts.original_headers)
    ):
        complaints = tuple(_feedback_recipients(parts, msg))
        if not any(c.email for c in complaints):
            base["problems"] = (*base["problems"], "no complained-about address in the report or the reported headers")
        return BounceReport(FEEDBACK_REPORT, complaints, **base)
    ses = _ses_notification(_json_documents(parts.texts))
    if ses is not None:
        return BounceReport(ses[0], tuple(ses[1]), **base)
    unsubscribe = _unsubscribe_request(msg)
    if unsubscribe:
        return BounceReport(FEEDBACK_REPORT, tuple(unsubscribe), **base)
    notice = _notice_text(parts)
    if parts.delivery_status:
        results = _dsn_recipients("\n\n".join(parts.delivery_status), notice, first_hop)
        failed = [r for r in results if r.action not in _NOT_FAILED_ACTIONS]
        if results and not failed:
            return BounceReport(DELIVERED_DSN, tuple(results), **base)
        if failed:
            return BounceReport(BOUNCE, tuple(failed), **base)
    if _is_auto_reply(msg) and not _looks_like_bounce(msg, ""):
        sender = [a.lower() for _, a in getaddresses([str(msg.get("From", ""))]) if a]
        return BounceReport(
            AUTO_REPLY, tuple(RecipientResult(email=s, kind="soft", reason="vacation") for s in sender), **base
        )
    problems = list(base.pop("problems"))
    detected = _detected_failures(msg, notice, _excluded_addresses(msg, parts), problems)
    if not detected and not _looks_like_bounce(msg, notice):
        return BounceReport(NOT_BOUNCE, (), problems=tuple(problems), **base)
    # Exim and Gmail name the failed recipients in a header; then flufl.bounce's detectors of the
    # MTAs' notice formats; the notice's words are the fallback.
    addresses = _addresses_in(msg.get_all("X-Failed-Recipients", []))
    addresses = addresses or detected or _text_recipients(notice, _excluded_addresses(msg, parts))
    if not addresses:
        inline = _inline_original(parts)
        for h in [*parts.original_headers, *([inline] if inline is not None else [])]:
            addresses.extend(_addresses_in(h.get_all("To", [])))
    if not addresses:
        # Still a bounce for the VERP address it came to, just without the recipient's own address.
        problems.append("no failed recipient address found in the notice or the returned headers")
        addresses = [""]
    addresses = list(dict.fromkeys(addresses))
    # A notice about one recipient speaks of it throughout, also in lines before its address.
    others = tuple(addresses)
    about = {addr: notice if len(addresses) == 1 else _notice_about(notice, addr, others) for addr in addresses}
    results = [
        _result(addr, failure_status(find_status(about[addr])), "failed", "", "", about[addr], first_hop)
        for addr in addresses
    ]
    if _is_google_groups_refusal(msg, notice):
        # Google Groups' notice lists four causes, all of them about the sender's right to post.
        results = [replace(r, reason="rejected", kind=SOFT) for r in results]
    return BounceReport(BOUNCE, tuple(results), problems=tuple(problems), **base)


def _detected_failures(msg: Message, notice: str, excluded: set[str], problems: list[str]) -> list[str]:
    """The failed addresses flufl.bounce's format detectors find, in the order the notice names them."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a third-party detector on hostile input: ours still read the notice
        problems.append(f"flufl.bounce could not read the notice: {type(exc).__name__}: {exc}")
        return []
    found = {a.decode("utf-8", "replace").strip().strip("<>").lower() for a in (*permanent, *temporary)}
    # Exim's "(generated from <address>)" names the alias that expanded, not another failure.
    aliases = {a.lower().strip("<>") for a in re.findall(r"\(generated from ([^)\s]+)\)", notice, re.IGNORECASE)}
    found = {a for a in found if _ADDRESS.fullmatch(a) and a not in excluded and a not in aliases}
    lowered = notice.lower()
    return sorted(found, key=lambda a: (lowered.find(a) % (len(lowered) + 1), a))


def _addresses_in(values: list) -> list[str]:
    """The real addresses among header values (never "undisclosed-recipients:;" and the like)."""
    found = [a.lower() for _, a in getaddresses([str(v) for v in values]) if a]
    return [a for a in found if _ADDRESS.fullmatch(a)]


def _is_google_groups_refusal(msg: Message, notice: str) -> bool:
    """Google Groups' "the group does not exist or you may not post to it" notice (in any language)."""
    sender = str(msg.get("From", "")).lower()
    if "mailer-daemon@googlemail.com" not in sender or not msg.get("X-Google-Smtp-Source"):
        return False
    return msg.get("X-Failed-Recipients") is not None and len(re.findall(r"(?m)^ ?\* ?", notice)) == 4
