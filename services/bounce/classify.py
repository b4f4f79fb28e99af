"""Why a message bounced and whether to stop mailing the address: RFC 3463 codes plus the MTAs' phrases.

A hard bounce means the address itself is gone (no such user, no such domain, moved, domain accepts no
mail); everything else (full mailbox, blocking, spam filters, policy, timeouts, suspended accounts) is
soft, the way Sisimai counts them: those addresses may work again and the sender, not the recipient, is
usually what has to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HARD = "hard"
SOFT = "soft"
COMPLAINT = "complaint"

# Reasons that mean the address will not work again.
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY_CODE = re.compile(r"(?<![\d.\-])([245][0-5]\d)(?:[ \-]|$)")


@dataclass(frozen=True)
class Verdict:
    """How one failed recipient is counted: kind (hard, soft, complaint) and a Sisimai-style reason."""

    kind: str
    reason: str


# Phrases the receiving servers use, most specific first. Each reason is tried in this order, so a
# "mailbox full" phrase wins over the 5.x.x status some servers send with it.
_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "mailboxfull",
        (
            r"mail ?box (?:is )?(?:full|exceeded|over ?quota|size limit)",
            r"mailbox (?:has )?(?:exceeded|reached) (?:the |its )?(?:maximum |storage )?(?:size|quota|limit)",
            r"over ?quota",
            r"quota (?:exceeded|violation|full)",
            r"exceed(?:ed|s)? (?:the )?(?:storage |disk )?quota",
            r"(?:user|recipient|account)(?:'s)? (?:mailbox |disk )?(?:is )?(?:full|over ?quota)",
            r"(?:storage|disk) (?:space |quota )?(?:full|exceeded)",
            r"insufficient (?:disk )?(?:space|storage)",
            r"not enough (?:storage|space)",
            r"mailfolder is full",
            r"too many messages in (?:this|the) mailbox",
            r"full mailbox",
            r"has exceeded (?:his|her|the|its) (?:storage|quota|size)",
            r"out of (?:disk )?space",
            r"boite (?:aux lettres )?pleine",
        ),
    ),
    (
        "exceedlimit",
        (r"message (?:size )?exceeds (?:the )?(?:fixed )?(?:maximum )?(?:message )?size", r"message too large"),
    ),
    (
        "suspend",
        (
            r"(?:account|mailbox|user|address|recipient)(?: is| has been)? (?:temporarily )?"
            r"(?:disabled|suspended|deactivated|inactive|locked|frozen|blocked)",
            r"(?:disabled|suspended|inactive|deactivated|locked|expired) (?:e-?mail |mail )?(?:account|mailbox|user)",
            r"this (?:account|mailbox) (?:has been|is) (?:disabled|suspended|deactivated|locked)",
            r"not (?:currently )?active",
            r"account (?:has )?expired",
            r"is not accepting (?:any )?mail",
        ),
    ),
    (
        "hasmoved",
        (r"address (?:has|was) (?:been )?(?:moved|changed)", r"user has moved", r"no longer (?:at|with|uses?) this"),
    ),
    (
        "hostunknown",
        (
            r"host (?:or domain name )?not found",
            r"(?:unknown|unrouteable|unroutable|invalid|non-?existent|no such) (?:mail )?(?:host|domain)",
            r"domain (?:name )?(?:not found|does not exist|doesn't exist|is not valid|unknown|lookup failed)",
            r"name or service not known",
            r"name service error",
            r"unrouteable address",
            r"no (?:mx|a|mail exchanger) (?:records? )?(?:found )?for",
            r"host unknown",
            r"dns (?:error|lookup).{0,40}(?:nxdomain|does not exist|not found)",
            r"nxdomain",
            r"recipient domain must exist",
            r"domain (?:isn't|is not) in my list of allowed rcpthosts",
        ),
    ),
    (
        "notaccept",
        (r"null mx", r"does not accept (?:any )?(?:e-?)?mail", r"not accepting (?:network )?messages"),
    ),
    (
        "userunknown",
        (
            r"(?:user|recipient|mailbox|address|account|addressee)(?: name)? (?:is )?"
            r"(?:unknown|not found|not known|does not exist|doesn't exist|invalid|not exist)",
            r"(?:unknown|invalid|non-?existent|nonexisting|no such|bad|illegal) "
            r"(?:local |e-?mail |destination )?(?:user|recipient|mailbox|address|account|addressee|alias)",
            r"no (?:such )?(?:mailbox|user|recipient|account|mail box)(?: here)?(?: by that name)?",
            r"(?:user|recipient|mailbox|account|address)(?: name)? (?:is )?not (?:found|valid|listed|recognized|local)",
            r"(?:user|recipient|mailbox|account|address) (?:unknown|invalid|doesn'?t exist)",
            r"does(?: not|n't) have (?:a|an) (?:\S+ )?(?:account|mailbox)",
            r"there is no (?:one|user|such user|such mailbox)",
            r"email account that you tried to reach does not exist",
            r"this user doesn't have a",
            r"address rejected: (?:user|recipient)",
            r"(?:user|mailbox|account) (?:does not exist|not exist|no longer exists?)",
            r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox)",
            r"unknown or illegal alias",
            r"user (?:not|isn't) (?:here|on file|in (?:local )?(?:directory|database))",
            r"recipient (?:rejected|not accepted)",
            r"no mailbox here",
            r"is not a known user",
            r"unknown (?:local[- ]part|recipient|user)",
            r"address does not exist",
            r"said: 550[ -]5\.1\.1",
            r"destination address rejected",
            r"invalid (?:mailbox|recipient)",
            r"mailbox (?:not found|unavailable|does not exist)",
            r"no such person",
            r"delivery to the following recipients? failed permanently",
            r"inexistent",
            r"user (?:account )?(?:is )?(?:unknown|unavailable)",
            r"not our customer",
            r"doesn't have an? \w+ account",
        ),
    ),
    (
        "expired",
        (
            r"(?:delivery )?time ?out",
            r"timed out",
            r"retry (?:time|timeout) (?:not reached|exceeded)",
            r"could not be delivered (?:with)?in (?:the last )?\d+",
            r"message (?:has been )?(?:in|on) (?:the )?queue (?:too long|for \d+|longer)",
            r"delivery (?:time )?expired",
            r"(?:giving up|gave up)",
            r"have not been able to deliver",
            r"could not deliver for",
            r"expired",
            r"undeliverable for too long",
        ),
    ),
    (
        "spamdetected",
        (r"spam", r"junk mail", r"unsolicited", r"content (?:was )?rejected", r"bulk mail"),
    ),
    (
        "virusdetected",
        (r"virus", r"malware", r"infected"),
    ),
    (
        "authfailure",
        (r"\bspf\b", r"\bdkim\b", r"\bdmarc\b", r"authentication (?:fail|check)", r"not authenticated"),
    ),
    (
        "requireptr",
        (r"reverse (?:dns|lookup)", r"\bptr\b", r"no reverse", r"cannot find your hostname", r"rdns"),
    ),
    (
        "blocked",
        (
            r"block(?:ed|list)",
            r"black ?list",
            r"\brbl\b",
            r"spamhaus",
            r"listed (?:in|at|on|by)",
            r"poor reputation",
            r"reputation",
            r"access denied",
            r"denied by policy",
            r"connection (?:refused|rejected)",
            r"client host rejected",
            r"not allowed to (?:send|connect)",
        ),
    ),
    (
        "toomanyconn",
        (r"too many (?:connections|messages|recipients|concurrent)", r"rate limit", r"try again later"),
    ),
    (
        "norelaying",
        (
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed)",
            r"we do not relay",
            r"not permitted to relay",
        ),
    ),
    (
        "rejected",
        (r"sender (?:address )?(?:rejected|denied|verify failed|unknown)", r"domain of sender"),
    ),
    (
        "filtered",
        (r"filtered", r"rejected by (?:the )?recipient", r"refused by (?:the )?recipient"),
    ),
    (
        "mailererror",
        (r"mailer error", r"program exited", r"command (?:died|failed)", r"unknown mailer", r"pipe to"),
    ),
    (
        "networkerror",
        (r"routing loop", r"too many hops", r"mail loop", r"loops back", r"network (?:is )?unreachable"),
    ),
    (
        "systemerror",
        (r"system error", r"internal error", r"server error", r"local error"),
    ),
)

_COMPILED = tuple((reason, re.compile("|".join(phrases), re.IGNORECASE)) for reason, phrases in _PHRASES)

# RFC 3463 subjects and details, read as the reasons above.
_STATUS_REASONS: dict[str, str] = {
    "1.0": "userunknown",
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "userunknown",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.10": "notaccept",
    "2.0": "filtered",
    "2.1": "suspend",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "mailererror",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",
    "4.6": "networkerror",
    "4.7": "expired",
    "5.0": "syntaxerror",
    "6.0": "contenterror",
    "7.0": "securityerror",
    "7.1": "rejected",
    "7.7": "securityerror",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
}

_AT_DATA = re.compile(
    r">>> DATA|end of DATA|after (?:end of )?DATA|SMTP command\s*:?\s*DATA|\bDATA command|after data",
    re.IGNORECASE,
)

# Codes too vague on their own: when the text says more, the text decides.
_VAGUE_STATUS = {"0.0", "5.0", "7.0", "7.1", "2.0", "1.0", "3.0", "4.0"}


def find_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in a text (e.g. '5.1.1'), or ''."""
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else ""


def find_reply_code(text: str) -> int:
    """The first SMTP reply code (2xx, 4xx, 5xx) in a text, or 0."""
    match = _REPLY_CODE.search(text or "")
    return int(match.group(1)) if match else 0


def reason_from_text(text: str) -> str:
    """The reason the MTA's words give, or '' when they name none we know."""
    for reason, pattern in _COMPILED:
        if pattern.search(text or ""):
            return reason
    return ""


def classify(status: str = "", diagnostic: str = "", smtp_code: int = 0) -> Verdict:
    """Classify one failed recipient from its enhanced status, the server's words and its reply code."""
    status = status or find_status(diagnostic)
    smtp_code = smtp_code or find_reply_code(diagnostic)
    detail = status.split(".", 1)[1] if status.count(".") == 2 else ""
    by_status = _STATUS_REASONS.get(detail, "")
    by_text = reason_from_text(diagnostic)
    if by_status and detail not in _VAGUE_STATUS:
        reason = by_status
        # Servers put 5.1.1 or 5.2.1 on over-quota and blocked mail too; believe a plainer phrase.
        if by_text in ("mailboxfull", "suspend", "blocked", "spamdetected", "authfailure", "toomanyconn"):
            reason = by_text
        elif reason in HARD_REASONS and by_text == "expired":
            reason = by_text
        elif reason in ("suspend", "filtered", "rejected") and by_text in HARD_REASONS:
            reason = by_text
    else:
        reason = by_text or by_status
    if not reason:
        reason = "undefined"
    if reason in HARD_REASONS and _AT_DATA.search(diagnostic or ""):
        # Refused after the message body was sent: a content filter speaking, not a missing mailbox.
        reason = "filtered"
    return Verdict(HARD if reason in HARD_REASONS else SOFT, reason)


def refused_at_data(text: str) -> bool:
    """True when the transcript shows the refusal came after DATA (content filtering)."""
    return bool(_AT_DATA.search(text or ""))


def is_permanent(status: str, smtp_code: int = 0) -> bool:
    """True for an RFC 3463 permanent failure (5.x.x) or a 5xx reply."""
    if status:
        return status.startswith("5")
    return 500 <= smtp_code < 600
