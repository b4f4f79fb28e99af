"""Why a message bounced and whether to stop mailing the address, decided the way Sisimai decides it.

A port of Sisimai's reason rules (p5-sisimai v5.1.0p3, BSD-2-Clause), asked in Sisimai's order: the
wording of an MTA's own notice (`phrases.NOTICES`, Sisimai::Lhost::*); the provider's own codes and
texts (`providers.py`, Sisimai::Rhost::*); then Sisimai::Reason: the RFC 3463 status code names a
reason (`STATUS_REASONS`), a first pass lets each reason claim the recipient from that name, the SMTP
command the server was answering and the server's words (`phrases.PHRASES`), a second pass reads the
words alone, and last come the status class, the Action and the command.
Only four reasons are hard, because only they say the address itself is gone: userunknown,
hostunknown, hasmoved and notaccept (the last only when permanent). Everything else (full mailbox,
blocking, spam and content filters, policy, timeouts, suspended accounts, rejected senders) is soft:
the address may work again, and usually the sender is what has to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.bounce.kinds import BounceKind
from services.bounce.phrases import ALIGNED, NOT_REJECTED, NOTICE_PATTERNS, NOTICES, OURS, OURS_ALIGNED, PHRASES
from services.bounce.providers import provider_in_reply, provider_reason

HARD = BounceKind.HARD
SOFT = BounceKind.SOFT
COMPLAINT = BounceKind.COMPLAINT

# Reasons that mean the address will not work again (Sisimai's hard bounces; notaccept when permanent).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
# Every reason name this module gives (Sisimai's), besides "delivered".
REASONS = frozenset(
    {
        "authfailure", "badreputation", "blocked", "contenterror", "exceedlimit", "expired", "feedback",
        "filtered", "hasmoved", "hostunknown", "mailboxfull", "mailererror", "mesgtoobig", "networkerror",
        "norelaying", "notaccept", "notcompliantrfc", "onhold", "policyviolation", "rejected", "requireptr",
        "securityerror", "spamdetected", "speeding", "suspend", "syntaxerror", "systemerror", "systemfull",
        "toomanyconn", "undefined", "userunknown", "vacation", "virusdetected",
    }
)  # fmt: skip

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY_CODE = re.compile(r"(?<![\d.\-])([245][0-5]\d)(?:[ \-]|$)")


@dataclass(frozen=True)
class Verdict:
    """How one failed recipient is counted: kind (hard, soft, complaint) and a Sisimai-style reason."""

    kind: str
    reason: str


# RFC 3463 / IANA enhanced status codes read as reasons (Sisimai::SMTP::Status). The vague X.0.0 and the
# codes servers use for many things (4.3.0, 4.4.0, 4.5.0, 4.7.0) are left out so the words decide.
# X.7.25 is a failed reverse-DNS check (RFC 7372), so requireptr; 5.1.10 is a null MX (RFC 7505), but
# Microsoft also answers it for an unknown recipient ("RecipientNotFound"): those words make it userunknown.
STATUS_REASONS: dict[str, str] = {
    "4.1.6": "hasmoved", "4.1.7": "rejected", "4.1.8": "rejected", "4.1.9": "systemerror",
    "4.2.1": "suspend", "4.2.2": "mailboxfull", "4.2.3": "exceedlimit", "4.2.4": "filtered",
    "4.3.1": "systemfull", "4.3.2": "notaccept", "4.3.3": "systemerror", "4.3.5": "systemerror",
    "4.4.1": "expired", "4.4.2": "networkerror", "4.4.3": "systemerror", "4.4.4": "networkerror",
    "4.4.5": "systemfull", "4.4.6": "networkerror", "4.4.7": "expired", "4.4.8": "networkerror",
    "4.5.3": "systemerror", "4.5.5": "systemerror",
    "4.6.0": "contenterror", "4.6.2": "contenterror", "4.6.5": "contenterror",
    "4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "securityerror", "4.7.6": "securityerror",
    "4.7.7": "securityerror", "4.7.12": "securityerror", "4.7.15": "securityerror", "4.7.16": "mesgtoobig",
    "4.7.24": "authfailure", "4.7.25": "requireptr", "4.7.26": "authfailure",
    "5.1.0": "userunknown", "5.1.1": "userunknown", "5.1.2": "hostunknown", "5.1.3": "userunknown",
    "5.1.4": "filtered", "5.1.6": "hasmoved", "5.1.7": "rejected", "5.1.8": "rejected",
    "5.1.9": "systemerror", "5.1.10": "notaccept",
    "5.2.0": "filtered", "5.2.1": "filtered", "5.2.2": "mailboxfull", "5.2.3": "exceedlimit", "5.2.4": "filtered",
    "5.3.0": "systemerror", "5.3.1": "systemfull", "5.3.2": "notaccept", "5.3.3": "systemerror",
    "5.3.4": "mesgtoobig", "5.3.5": "systemerror",
    "5.4.0": "networkerror", "5.4.3": "systemerror", "5.4.4": "hostunknown",
    "5.5.2": "syntaxerror", "5.5.3": "toomanyconn", "5.5.4": "systemerror", "5.5.5": "systemerror",
    "5.5.6": "syntaxerror",
    "5.6.0": "contenterror", "5.6.1": "contenterror", "5.6.2": "contenterror", "5.6.3": "contenterror",
    "5.6.5": "contenterror", "5.6.6": "contenterror", "5.6.7": "contenterror", "5.6.8": "contenterror",
    "5.6.9": "contenterror",
    "5.7.0": "securityerror", "5.7.1": "securityerror", "5.7.2": "securityerror", "5.7.3": "securityerror",
    "5.7.4": "securityerror", "5.7.5": "securityerror", "5.7.6": "securityerror", "5.7.7": "securityerror",
    "5.7.8": "securityerror", "5.7.9": "securityerror", "5.7.10": "securityerror", "5.7.11": "securityerror",
    "5.7.13": "suspend", "5.7.14": "securityerror", "5.7.15": "securityerror", "5.7.16": "mesgtoobig",
    "5.7.17": "hasmoved", "5.7.18": "hasmoved", "5.7.19": "securityerror",
    "5.7.20": "authfailure", "5.7.21": "authfailure", "5.7.22": "authfailure", "5.7.23": "authfailure",
    "5.7.24": "authfailure", "5.7.25": "requireptr", "5.7.26": "authfailure", "5.7.27": "notaccept",
    "5.7.28": "spamdetected", "5.7.29": "authfailure", "5.7.30": "securityerror",
}  # fmt: skip

# Reasons a status code names only loosely: the server's words get a second look (Sisimai's retry()).
_RETRY = frozenset(
    {"", "undefined", "onhold", "systemerror", "securityerror", "expired", "suspend", "networkerror",
     "hostunknown", "userunknown"}
)  # fmt: skip
# Sisimai's first pass: each reason may claim the recipient (see `_claims`), in this order.
_FIRST_PASS = (
    "mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying", "authfailure",
    "userunknown", "filtered", "requireptr", "notcompliantrfc", "badreputation", "rejected", "hostunknown",
    "spamdetected", "speeding", "toomanyconn", "blocked",
)  # fmt: skip
# The fallback when the first pass decided nothing: the words alone, in this order.
_SECOND_PASS = (
    "mailboxfull", "authfailure", "badreputation", "speeding", "spamdetected", "virusdetected",
    "policyviolation", "norelaying", "systemerror", "networkerror", "suspend", "contenterror", "systemfull",
    "notaccept", "expired", "securityerror", "mailererror",
)  # fmt: skip
# Commands before the message body: a refusal there cannot be about the content.
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})
# A 5.1.1 is also put on relaying, blocking, full and moved mailboxes: those words win over it.
_NOT_USERUNKNOWN = ("norelaying", "blocked", "mailboxfull", "hasmoved", "rejected", "notaccept")

_COMMAND = re.compile(
    r"(?<![A-Za-z0-9@.])(HELO|EHLO|STARTTLS|AUTH|MAIL FROM|RCPT TO|RCPT|DATA)(?![A-Za-z0-9@])"
    r"|(?:in reply to|after|while sending|during|>>>|<<<)\s*(mail from|rcpt to|data|end of data|helo|ehlo)\b",
    re.IGNORECASE,
)
_COMMAND_NAMES = {"mail from": "MAIL", "rcpt to": "RCPT", "end of data": "DATA"}
_COMMAND_ORDER = ("CONN", "HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA")
# qmail's remote notices name the step in words (qmail-remote.c).
_QMAIL_STEPS = (
    (" but greeting failed.", "CONN"),
    (" but my name was rejected.", "EHLO"),
    (" but sender was rejected.", "MAIL"),
    (" does not like recipient.", "RCPT"),
    (" failed on data command", "DATA"),
    (" failed after i sent the message", "DATA"),
)


def _aligned(text: str, fragments: tuple[str, ...]) -> bool:
    at = 0
    for fragment in fragments:
        found = text.find(fragment, at)
        if found < 0:
            return False
        at = found + len(fragment)
    return True


def matches(reason: str, text: str) -> bool:
    """True when the server's words (any case) are among those that mean `reason`."""
    if not text:
        return False
    text = " ".join(text.lower().split())
    if reason == "rejected" and any(p in text for p in NOT_REJECTED):
        return False
    return (
        any(p in text for p in PHRASES.get(reason, ()))
        or any(p in text for p in OURS.get(reason, ()))
        or any(_aligned(text, fragments) for fragments in ALIGNED.get(reason, ()))
        or any(_aligned(text, fragments) for fragments in OURS_ALIGNED.get(reason, ()))
    )


def find_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in a text (e.g. '5.1.1'): a failure's before a success's
    (a transcript quotes the 250s that went before), a specific one before X.0.0."""
    found = [".".join(m.groups()) for m in _STATUS.finditer(text or "")]
    failures = [s for s in found if s[0] in "45"]
    specific = [s for s in failures if not s.endswith(".0.0") and s != "4.4.7"]
    return (specific or failures or found or [""])[0]


def prefer_status(reported: str, diagnostic: str) -> str:
    """The DSN's Status or the one in the server's reply, whichever says more (Sisimai's prefer()).

    The reply's own code wins when the Status is vague (X.0.0, X.0.Y), when it is the ambiguous 4.4.7
    or a 5.3.Z system error, or when the class disagrees with the reply code's.
    """
    quoted = find_status(diagnostic)
    if len(reported) < 5:
        return quoted
    if len(quoted) < 5 or reported == quoted:
        return reported
    reply = find_reply_code(diagnostic)
    if reply and reported[0] != quoted[0]:
        if str(reply)[0] == reported[0]:
            return reported
        if str(reply)[0] == quoted[0]:
            return quoted
    if ".0.0" in reported:
        return reported if ".0.0" in quoted else quoted
    if ".0" in reported and ".0" not in quoted:
        return quoted
    if ".0.0" in quoted:
        return reported
    if reported == "4.4.7" or reported.startswith("5.3."):
        return quoted
    if reported == "5.1.1":
        return reported if ".0" in quoted else quoted
    if reported == "5.1.3" and quoted.startswith("5.7."):
        return quoted
    return reported


def find_reply_code(text: str) -> int:
    """The first SMTP reply code in a text, a refusal's (4xx, 5xx) before a success's (2xx), or 0."""
    codes = [int(m.group(1)) for m in _REPLY_CODE.finditer(text or "")]
    return next((c for c in codes if c >= 400), codes[0] if codes else 0)


def find_command(text: str) -> str:
    """The SMTP command a refusal answered (HELO, MAIL, RCPT, DATA, ...), when the transcript says so.

    Upper-case command words, or the phrases MTAs write ("in reply to RCPT TO command", "after end of
    data", ">>> DATA"); the furthest command in the session wins, since a later one was reached.
    """
    lowered = (text or "").lower()
    best = ""
    for words, step in _QMAIL_STEPS:
        if words in lowered and (not best or _COMMAND_ORDER.index(step) > _COMMAND_ORDER.index(best)):
            best = step
    for match in _COMMAND.finditer(text or ""):
        if match.group(1):
            if match.group(1) != match.group(1).upper():
                continue  # an ordinary word ("data", "mail from"), not a command in a transcript
            word = match.group(1).upper()
        else:
            word = match.group(2).lower()
            word = _COMMAND_NAMES.get(word, word).upper()
        word = _COMMAND_NAMES.get(word.lower(), word.split()[0])
        if not best or _COMMAND_ORDER.index(word) > _COMMAND_ORDER.index(best):
            best = word
    return best


@dataclass(frozen=True)
class _Facts:
    status: str
    name: str  # the reason the status code names, or ""
    text: str  # the server's words, lower-cased, white space squeezed
    code: int
    command: str
    preset: str = ""  # the reason an MTA's notice wording already gave (Sisimai's MTA modules)


def _claims(reason: str, f: _Facts) -> bool:
    """Sisimai's `true()` of one reason: do the status, command and words, taken together, point to it."""
    if f.preset == reason:
        return True
    if reason in ("mailboxfull", "exceedlimit", "authfailure", "requireptr", "toomanyconn", "blocked"):
        if reason in ("mailboxfull", "exceedlimit") and not f.status:
            return False
        return f.name == reason or matches(reason, f.text)
    if reason == "mesgtoobig":
        if f.name == "mesgtoobig":
            return True
        return f.name != "exceedlimit" and matches(reason, f.text)
    if reason == "suspend":
        return bool(f.status) and (f.code == 525 or matches(reason, f.text))
    if reason == "norelaying":
        if f.preset in ("securityerror", "systemerror", "undefined"):
            return False
        return f.command not in ("CONN", "EHLO", "HELO") and matches(reason, f.text)
    if reason == "userunknown":
        if f.name == "suspend":
            return False
        if f.name == "userunknown":
            return not any(matches(other, f.text) for other in _NOT_USERUNKNOWN)
        # Any other status: only a refusal of RCPT itself says the mailbox is missing.
        return f.command == "RCPT" and matches(reason, f.text)
    if reason == "filtered":
        if f.name == "suspend":
            return False
        if f.name == "filtered":
            return matches("userunknown", f.text) or matches("filtered", f.text)
        # "No such user" after the body was sent (or at an unknown step) is a filter speaking.
        return f.command not in _BEFORE_DATA and (matches("filtered", f.text) or matches("userunknown", f.text))
    if reason == "rejected":
        if f.name == "rejected":
            return True
        if f.command == "MAIL":
            return matches(reason, f.text)
        if f.command == "DATA":
            return f.name != "userunknown" and matches(reason, f.text)
        return f.name in ("", "onhold", "undefined", "securityerror", "systemerror") and matches(reason, f.text)
    if reason == "hostunknown":
        if f.name == "hostunknown":
            return not matches("networkerror", f.text)
        return matches(reason, f.text)
    if reason == "spamdetected":
        if not f.status:
            return False
        if f.name == reason:
            return True
        return f.command not in _BEFORE_DATA and matches(reason, f.text)
    if reason == "speeding":
        return bool(f.status) and matches(reason, f.text)
    return matches(reason, f.text)  # hasmoved, notcompliantrfc, badreputation


def notice_reason(text: str) -> str:
    """The reason an MTA's own notice wording gives (phrases.NOTICES), or ''."""
    text = " ".join((text or "").lower().split())
    for reason, fragments in NOTICES.items():
        if any(fragment in text for fragment in fragments):
            return reason
    for reason, pattern in _NOTICE_PATTERNS.items():
        if pattern.search(text):
            return reason
    return ""


_NOTICE_PATTERNS = {reason: re.compile(pattern) for reason, pattern in NOTICE_PATTERNS.items()}


def squeeze_reply(text: str) -> str:
    """A multi-line SMTP reply as one sentence: the "550-5.7.1 " that starts each line taken out.

    Servers repeat the code on every line of a long reply ("550-5.7.1 Messages with multiple 550-5.7.1
    addresses in From: header..."), which splits the very words the rules look for (as Sisimai does).
    """
    code = find_reply_code(text)
    if not code or f"{code}-" not in text:
        return text
    status = find_status(text)
    for separator in ("-", " "):
        if status:
            text = text.replace(f"{code}{separator}{status} ", "").replace(f"{code}{separator}{status}", "")
        text = text.replace(f"{code}{separator}", "")
    return f"{code} {status} {text}".replace("  ", " ") if status else f"{code} {text}"


# Gmail's "(state N)" at the end of the reply it quotes names the SMTP step it had reached, and so what
# a refusal there means (Sisimai's Gmail module): 6 MAIL, 8/9/12 AUTH, 13 EHLO, 14 RCPT, 15-18 DATA.
_GMAIL_STATE = re.compile(r"\(state (\d{1,2})\)\.?\s*$")
_GMAIL_STATES = {
    "6": "systemerror", "8": "systemerror", "9": "systemerror", "12": "norelaying", "13": "blocked",
    "14": "userunknown", "15": "filtered", "17": "filtered", "18": "filtered",
}  # fmt: skip


def _fallback(f: _Facts, action: str, x_unix: bool) -> str:
    """Sisimai's anotherone(): the words alone, then the status class, the Action and the command."""
    if f.preset:
        return f.preset
    reason = f.name
    if reason and reason not in _RETRY and not x_unix:
        return reason
    for candidate in _SECOND_PASS:
        if matches(candidate, f.text):
            return candidate
    if reason:
        return reason
    subject = f.status[:3]
    if subject in ("5.6", "4.6"):
        return "contenterror"
    if subject in ("5.7", "4.7"):
        return "securityerror"
    if x_unix:
        return "mailererror"
    if 400 < f.code < 408 or 500 < f.code < 508:
        return "syntaxerror"
    if action in ("delayed", "expired"):
        return "expired"
    if f.command in ("HELO", "EHLO"):
        return "blocked"
    return ""


def reason_of(
    status: str = "", diagnostic: str = "", smtp_code: int = 0, command: str = "", action: str = "", provider: str = ""
) -> str:
    """The Sisimai reason for one failed recipient (see the module docstring); `provider` as providers.py names it."""
    raw = squeeze_reply(diagnostic or "")
    text = " ".join(raw.lower().split())
    if status.startswith("2."):
        return "delivered"
    status = failure_status(prefer_status(status, raw))
    name = STATUS_REASONS.get(status, "")
    command = command or find_command(raw)
    addressing = status[1:3] == ".1" and status not in ("5.1.7", "5.1.8", "4.1.7", "4.1.8")
    if not command and (not name or addressing) and matches("userunknown", text):
        # Servers say a mailbox does not exist in answer to RCPT; with no transcript to say otherwise and
        # no status, or one about the recipient's address (X.1.Y, RFC 3463; Microsoft's 5.1.10
        # RecipientNotFound among them), that is the step, for every rule below alike. Sisimai's MTA
        # modules read their notices the same way; its generic rules would say "filtered".
        command = "RCPT"
    state = _GMAIL_STATE.search(text)
    if state and state.group(1) in _GMAIL_STATES:
        # Gmail's own notices end the remote reply with the step it reached: "(state 14)".
        # A precise status the reply quotes names the reason; else the step does.
        return name if name and ".0" not in status else _GMAIL_STATES[state.group(1)]
    if " but my name was rejected." in text:
        # qmail's words for a refused HELO: the client itself was not wanted, whatever follows.
        return "blocked"
    # A refusal of the greeting or of HELO is about the client, not what an MTA's notice says next.
    preset = "" if command in ("CONN", "HELO", "EHLO") else notice_reason(text)
    if preset and preset not in _RETRY:
        return preset
    facts = _Facts(status, name, text, smtp_code or find_reply_code(raw), command, preset)
    # A provider's own codes and texts say more than the generic rules (Sisimai asks them first); the
    # sender's own SMTP replies come without a host name, but the reply may show whose it is.
    found = provider_reason(provider or provider_in_reply(raw), status, facts.code, raw, command)
    if found:
        return found
    # "X-Unix; ..." is a local program's exit, not a server's reply.
    x_unix = bool(re.match(r"(?i)\s*x-unix\s*;", raw)) or "x-unix; " in text
    if not x_unix:
        for reason in _FIRST_PASS:
            if _claims(reason, facts):
                return reason
    reason = _fallback(facts, action, x_unix)
    if not reason and action == "delayed":
        reason = "expired"
    if not reason and matches("vacation", text):
        reason = "vacation"
    return reason or ("onhold" if text else "undefined")


def is_hard(reason: str, status: str = "", smtp_code: int = 0, text: str = "") -> bool:
    """Sisimai's hard bounce: the address is gone (notaccept only when the refusal is permanent)."""
    if reason != "notaccept":
        return reason in HARD_REASONS
    if status or smtp_code:
        return (status or str(smtp_code)).startswith("5")
    return not re.search(r"\b4\d\d\b|temporar|persistent", text or "", re.IGNORECASE)


def failure_status(status: str) -> str:
    """A status read from a failure's words: a 2.x.x there is a version number or a quoted success."""
    return "" if status.startswith("2.") else status


def classify(
    status: str = "", diagnostic: str = "", smtp_code: int = 0, command: str = "", action: str = "", provider: str = ""
) -> Verdict:
    """Classify one failed recipient from its enhanced status, the server's words, reply code and command."""
    reason = reason_of(status, diagnostic, smtp_code, command, action, provider)
    status = status if status.startswith("2.") else failure_status(prefer_status(status, diagnostic))
    return Verdict(HARD if is_hard(reason, status, smtp_code, diagnostic) else SOFT, reason)
