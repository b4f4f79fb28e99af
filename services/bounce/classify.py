"""Why a message bounced and whether to stop mailing the address, the way Sisimai decides it.

The reason (userunknown, mailboxfull, blocked, ...) comes from the RFC 3463 status code, the SMTP
command the server was answering and the server's own words; only four reasons are hard, because only
they say the address itself is gone: userunknown, hostunknown, hasmoved and notaccept. Everything else
(full mailbox, blocking, spam and content filters, policy, timeouts, suspended accounts, rejected
senders) is soft: the address may work again, and usually the sender is what has to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.bounce.kinds import BounceKind

HARD = BounceKind.HARD
SOFT = BounceKind.SOFT
COMPLAINT = BounceKind.COMPLAINT

# Reasons that mean the address will not work again (Sisimai's hardbounce reasons).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY_CODE = re.compile(r"(?<![\d.\-])([245][0-5]\d)(?:[ \-]|$)")


@dataclass(frozen=True)
class Verdict:
    """How one failed recipient is counted: kind (hard, soft, complaint) and a Sisimai-style reason."""

    kind: str
    reason: str


# RFC 3463 / IANA enhanced status codes read as reasons; the vague X.0.0 and the codes servers use for
# many things (4.3.0, 4.4.0, 4.5.0, 4.7.0) are left out so the words decide.
_STATUS_NAMES: dict[str, str] = {
    "4.1.6": "hasmoved", "4.1.7": "rejected", "4.1.8": "rejected", "4.1.9": "systemerror",
    "4.2.1": "suspend", "4.2.2": "mailboxfull", "4.2.3": "exceedlimit", "4.2.4": "filtered",
    "4.3.1": "systemfull", "4.3.2": "notaccept", "4.3.3": "systemerror", "4.3.5": "systemerror",
    "4.4.1": "expired", "4.4.2": "networkerror", "4.4.3": "systemerror", "4.4.4": "networkerror",
    "4.4.5": "systemfull", "4.4.6": "networkerror", "4.4.7": "expired", "4.4.8": "networkerror",
    "4.5.3": "systemerror", "4.5.5": "systemerror",
    "4.6.0": "contenterror", "4.6.2": "contenterror", "4.6.5": "contenterror",
    "4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "securityerror", "4.7.6": "securityerror",
    "4.7.7": "securityerror", "4.7.12": "securityerror", "4.7.15": "securityerror", "4.7.16": "mesgtoobig",
    "4.7.24": "authfailure", "4.7.25": "blocked", "4.7.26": "authfailure",
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
    "5.7.24": "authfailure", "5.7.25": "blocked", "5.7.26": "authfailure", "5.7.27": "notaccept",
}  # fmt: skip

# Reasons a status code names only loosely: the server's words may say something sharper.
_RETRY = frozenset({"", "undefined", "onhold", "systemerror", "securityerror", "networkerror", "userunknown"})

# What the receiving servers say for each reason (matched case-insensitively).
_PHRASES: dict[str, tuple[str, ...]] = {
    "mailboxfull": (
        r"mail ?box (?:is )?(?:full|exceeded|over ?quota|size limit exceeded|quota usage exceeded)",
        r"mailbox (?:has )?(?:exceeded|reached) (?:the |its )?(?:local |maximum |storage |disk )?"
        r"(?:size|quota|limit|space)",
        r"over ?quota",
        r"quota (?:exceeded|violation|full)",
        r"exceed(?:ed|s|ing)? (?:the |its |their )?(?:mailbox |storage |disk )?quota",
        r"(?:user|recipient|account)(?:'s)? (?:mailbox |disk )?(?:is )?(?:full|over (?:the )?(?:disk )?quota)",
        r"(?:storage|disk) (?:space |quota )?(?:full|exceeded)",
        r"exceeded storage allocation",
        r"insufficient (?:disk )?(?:space|storage)",
        r"not enough (?:storage|space)",
        r"does not have enough space",
        r"mailfolder is full",
        r"too many messages (?:in (?:this|the) mailbox|on the server)",
        r"too much mail data",
        r"full mailbox",
        r"has exceeded (?:his|her|the|its) (?:storage|quota|size|disk)",
        r"reached disk quota",
        r"space has been used up",
        r"boite (?:aux lettres |du destinataire )?pleine",
    ),
    "mesgtoobig": (
        r"message (?:is )?too (?:big|large)",
        r"exceeded maximum inbound message size",
        r"message (?:size )?exceeds (?:the )?(?:fixed )?(?:maximum )?(?:message )?size",
        r"size (?:limit )?exceeded",
        r"message length exceeds",
        r"line too long",
    ),
    "exceedlimit": (r"message (?:length )?exceeds (?:administrative|local) limit", r"limit exceeded"),
    "suspend": (
        r"(?:account|mailbox|user|address|recipient)(?: is| has been)? (?:temporarily )?"
        r"(?:disabled|suspended|deactivated|inactive|locked|frozen|on hold)",
        r"(?:disabled|suspended|inactive|deactivated|locked|expired) (?:e-?mail |mail )?(?:account|mailbox|user)",
        r"this (?:account|mailbox) (?:has been|is) (?:disabled|suspended|deactivated|locked)",
        r"not (?:currently )?active",
        r"account (?:has )?expired",
        r"recipient suspended",
        r"mailbox (?:is )?currently suspended",
        r"has been (?:temporarily )?(?:suspended|disabled)",
        r"is a deactivated mailbox",
    ),
    "hasmoved": (
        r"address (?:has|was) (?:been )?(?:moved|changed)",
        r"has moved (?:to|and)",
        r"user has moved",
        r"no longer (?:at|with|uses?) this",
        r"recipient no longer on server",
        r"not our customer",
    ),
    "norelaying": (
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)",
        r"we do not relay",
        r"not permitted to relay",
        r"unable to relay",
        r"relay not permitted",
        r"relaying mail to .+ is not allowed",
        r"insecure mail relay",
        r"not (?:a )?(?:local|allowed) (?:domain|host)",
    ),
    "userunknown": (
        r"(?:user|recipient|mailbox|address|account|addressee)(?: name)? (?:is )?"
        r"(?:unknown|not found|not known|does not exist|doesn't exist|invalid|not exist|not valid)",
        r"(?:unknown|invalid|non-?existent|nonexisting|no such|bad|illegal) "
        r"(?:local |e-?mail |destination |virtual )?(?:user|recipient|mailbox|address|account|addressee|alias)",
        r"no (?:such )?(?:mailbox|user|recipient|account|mail box|person)(?: here)?(?: by that name)?",
        r"(?:user|recipient|mailbox|account|address)(?: name)? (?:is )?not (?:found|valid|listed|recognized|local)",
        r"does(?: not|n't) have (?:a|an) (?:\S+ )?(?:account|mailbox)",
        r"there is no (?:one|user|such user|such mailbox)",
        r"email account that you tried to reach does not exist",
        r"address rejected: (?:user|recipient|invalid user|unknown user)",
        r"(?:user|mailbox|account) (?:does not exist|not exist|no longer exists?)",
        r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox)",
        r"is not a (?:known user|valid mailbox)",
        r"unknown or illegal alias",
        r"user (?:not|isn't) (?:here|on file|in (?:local )?(?:directory|database))",
        r"no mailbox here",
        r"unknown (?:local[- ]part|recipient|user|e-?mail address|mailbox)",
        r"address (?:does not exist|unknown)",
        r"destination address rejected",
        r"mailbox (?:not (?:found|present)|unavailable|does not exist|invalid|is (?:inactive|unavailable))",
        r"requested action not taken: mailbox unavailable",
        r"inexistent",
        r"user (?:account )?(?:is )?(?:unknown|unavailable)",
        r"doesn't have an? \S+ account",
        r"bad[-_ ]recipient",
        r"recipient not (?:ok|found|exist)",
        r"resolver\.adr\.recip(?:ient)?notfound",
        r"archived recipient",
        r"badrcptto",
        r"address no longer accepts mail",
        r"no valid recipients",
        r"destination addresses were unknown",
        r"not a valid user here",
        r"not a local address",
        r"email address (?:does not exist|could not be found|is wrong)",
        r"#5\.1\.1 bad address",
        r"adresse (?:destinataire )?invalide|destinataire invalide",
        r"no existe (?:dicha persona|ese usuario)",
        r"does not have a final (?:e-?mail )?delivery point",
        r"(?:adresse|destinataire|utilisateur|bo[iî]te).{0,40}n'existe pas",
        r"existiert nicht|unbekannter? (?:empf[äa]nger|benutzer)",
        r"(?:usuario|destinatario|buz[oó]n).{0,30}no existe",
    ),
    "filtered": (
        r"account is protected by",
        r"has restricted sms e-mail",
        r"is not accepting any mail",
        r"message filtered",
        r"message rejected due to user rules",
        r"not found recipient account",
        r"refuse to receive mail",
        r"only accepting mail from specific",
        r"refused due to recipient preferences",
        r"user refuses to receive",
        r"user reject",
        r"you have been blocked by the recipient",
        r"rejected by (?:the )?recipient",
        r"refused by (?:the )?recipient",
    ),
    "rejected": (
        r"access denied \(in reply to mail from command\)",
        r"administrative prohibition",
        r"domain of sender address",
        r"empty envelope senders not allowed",
        r"null sender is not allowed",
        r"invalid sender",
        r"sender (?:address )?(?:rejected|denied|verify failed|unknown|is spammer|not pre-approved|domain is empty)",
        r"sender verify failed",
        r"sender domain listed at",
        r"returned mail not accepted here",
        r"unroutable sender address",
        r"server does not accept mail from",
        r"fully qualified email address required",
        r"mail from not owned by user",
        r"by non-member to a members-only list",
        r"not allowed to post to this mailing list",
        r"your email address has been blacklisted",
        r"sender .{0,60} rejected",
    ),
    "hostunknown": (
        r"domain (?:does not exist|doesn't exist|is not reachable|must exist|not found|name not found|unknown)",
        r"host (?:or domain name not found|unknown|unreachable|not found)",
        r"mail domain mentioned in email address is unknown",
        r"name or service not known",
        r"no such domain",
        r"recipient address rejected: unknown domain",
        r"recipient domain must exist",
        r"the account or domain may not exist",
        r"unknown (?:host|domain)",
        r"unrouteable address",
        r"unroutable (?:address|domain)",
        r"no (?:mx|a|mail exchanger) (?:records? )?(?:found )?for",
        r"nxdomain",
        r"domain (?:isn't|is not) in my list of allowed rcpthosts",
    ),
    "spamdetected": (
        r"\bspam\b",
        r"appears to be unsolicited",
        r"unsolicited (?:bulk |commercial )?(?:e-?mail|mail|message)",
        r"\bube\b",
        r"bulk (?:e-?mail|mail|advertising)",
        r"content filter rejection",
        r"message content rejected",
        r"mail content denied",
        r"message (?:looks like|appears to be|is probably) spam",
        r"rejecting banned content",
        r"blacklisted url in message",
        r"message rejected (?:as spam|because of unacceptable content|due to suspected spam)",
        r"spam-like characteristics",
        r"probable spam",
        r"mass mailer",
    ),
    "toomanyconn": (
        r"too many (?:connections|concurrent|simultaneous|sessions|messages|recipients|errors)",
        r"rate limit",
        r"connection rate",
        r"too many (?:smtp )?sessions",
        r"exceeded the (?:maximum )?number of",
        r"throttl",
    ),
    "blocked": (
        r"block(?:ed)? (?:list|using|by)",
        r"blocklist",
        r"black ?list(?:ed)?",
        r"\b(?:rbl|dnsbl)\b",
        r"spamhaus",
        r"spamcop",
        r"listed (?:in|at|on|by) ",
        r"access from ip address .+ blocked",
        r"client host .{0,80}(?:blocked|rejected)",
        r"connection (?:refused|rejected|dropped|reset by peer)",
        r"not allowed to (?:send|connect)",
        r"sender ip (?:address|reverse lookup) rejected",
        r"bad sender ip address",
        r"(?:ip|domain) reputation",
        r"your (?:ip|network|server) .{0,40}(?:blocked|listed|blacklisted)",
        r"dynamic ips?\b",
        r"hosts with dynamic ip",
        r"rejected (?:by|due to) (?:our )?(?:rbl|dnsbl|blocklist)",
        r"smtp error from remote mail server after initial connection",
        r"connected to .+ but (?:my name|greeting) (?:was rejected|failed)",
        r"refused to talk to me",
        r"not currently accepting mail from your ip",
        r"was blocked by",
        r"go away",
        r"ip .{0,40} is blocked",
    ),
    "requireptr": (
        r"reverse (?:dns|lookup)",
        r"\bptr record",
        r"no ptr",
        r"cannot find your hostname",
        r"cannot resolve your address",
        r"\brdns\b",
    ),
    "authfailure": (
        r"\bspf\b",
        r"\bdkim\b",
        r"\bdmarc\b",
        r"sender policy framework",
        r"domainkeys",
    ),
    "badreputation": (r"poor reputation", r"bad reputation", r"low reputation"),
    "policyviolation": (
        r"policy violation",
        r"violat(?:es|ion of) (?:our |the )?(?:\w+ )?polic(?:y|ies)",
        r"not accepted for policy reasons",
        r"rejected for policy reasons",
        r"because of (?:local|our) policy",
        r"prohibited (?:attachment|file)",
        r"email not accepted for policy reasons",
    ),
    "virusdetected": (r"virus", r"malware", r"infected", r"\btrojan\b", r"malicious (?:content|attachment)"),
    "securityerror": (
        r"authentication (?:failure|failed|required|credentials invalid)",
        r"unauthenticated senders not allowed",
        r"verification failure",
        r"not authorized to send mail",
        r"account not subscribed to ses",
        r"not authorized to perform ses",
        r"access denied",
    ),
    "systemerror": (
        r"system error",
        r"internal (?:server )?error",
        r"server error",
        r"local error",
        r"server configuration error",
        r"too many hops",
        r"routing loop",
        r"mail loop",
        r"loops back to myself",
        r"unable to deliver to a \w+",
        r"temporary error",
        r"out of memory",
    ),
    "networkerror": (
        r"network (?:is )?unreachable",
        r"network error",
        r"malformed or unexpected name server reply",
        r"name service error",
        r"dns (?:lookup )?(?:error|failure|problem)",
        r"could not connect",
        r"connection (?:timed out|lost|closed)",
        r"no route to host",
        r"unable to connect",
        r"lost connection",
        r"host name lookup failure",
        r"temporary (?:dns|lookup) failure",
    ),
    "expired": (
        r"(?:delivery )?time ?out",
        r"timed out",
        r"retry (?:time|timeout) (?:not reached|exceeded)",
        r"could not be delivered (?:with)?in (?:the last )?\d+",
        r"(?:in|on) (?:the )?queue (?:too long|for \d+|longer)",
        r"delivery (?:time )?expired",
        r"(?:giving up|gave up)",
        r"have not been able to deliver",
        r"could not deliver for",
        r"delivery attempts? (?:will continue|expired)",
        r"undeliverable for too long",
        r"delivery failed (?:after )?\d+ attempts",
        r"message expired",
        r"retry time exceeded",
        r"has not been delivered",
        r"been delayed",
    ),
    "contenterror": (
        r"improper use of 8-bit data",
        r"message header (?:size|is invalid)",
        r"invalid (?:mime|header|message)",
        r"header (?:is )?(?:too long|invalid|malformed)",
        r"too many (?:received )?headers",
        r"message (?:content|body) (?:is )?(?:invalid|malformed)",
        r"content (?:was )?rejected",
        r"bare lf",
    ),
    "systemfull": (
        r"mail system full",
        r"system (?:storage )?(?:is )?full",
        r"requested mail action aborted: exceeded storage",
    ),
    "notaccept": (
        r"null mx",
        r"does not accept (?:any )?(?:e-?)?mail",
        r"not accepting (?:network )?messages",
        r"accepts no mail",
        r"mail is not accepted",
        r"smtp service (?:is )?not available",
    ),
    "mailererror": (
        r"mailer error",
        r"program exited",
        r"command (?:died|failed|output)",
        r"unknown mailer",
        r"pipe to",
        r"exit (?:status|code) \d+",
        r"procmail",
        r"\|/",
    ),
    "syntaxerror": (r"syntax error", r"command unrecognized", r"unrecognized command", r"malformed address"),
}

_COMPILED: dict[str, re.Pattern[str]] = {
    reason: re.compile("|".join(f"(?:{p})" for p in phrases), re.IGNORECASE) for reason, phrases in _PHRASES.items()
}

# Sisimai's first pass: each reason claims a recipient by its status code or its phrases, in this order.
_FIRST_PASS = (
    "mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying", "userunknown",
    "filtered", "rejected", "hostunknown", "spamdetected", "toomanyconn", "blocked",
)  # fmt: skip
# The fallback when neither the code nor the first pass decided: the words alone, in this order.
_SECOND_PASS = (
    "mailboxfull", "authfailure", "badreputation", "requireptr", "spamdetected", "virusdetected",
    "policyviolation", "norelaying", "systemerror", "networkerror", "suspend", "contenterror", "systemfull",
    "notaccept", "expired", "securityerror", "mailererror",
)  # fmt: skip
# Commands before the message body: a refusal there cannot be about the content.
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})

_COMMAND = re.compile(
    r"(?<![A-Za-z0-9@.])(HELO|EHLO|STARTTLS|AUTH|MAIL FROM|RCPT TO|DATA)(?![A-Za-z0-9@])"
    r"|(?:in reply to|after|while sending|during|>>>|<<<)\s*(mail from|rcpt to|data|end of data|helo|ehlo)\b",
    re.IGNORECASE,
)
_COMMAND_NAMES = {"mail from": "MAIL", "rcpt to": "RCPT", "end of data": "DATA"}


def matches(reason: str, text: str) -> bool:
    """True when the server's words are among those that mean `reason`."""
    pattern = _COMPILED.get(reason)
    return bool(pattern and text and pattern.search(text))


def find_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in a text (e.g. '5.1.1'), preferring a specific one to X.0.0."""
    found = [".".join(m.groups()) for m in _STATUS.finditer(text or "")]
    specific = [s for s in found if not s.endswith(".0.0") and s != "4.4.7"]
    return (specific or found or [""])[0]


def find_reply_code(text: str) -> int:
    """The first SMTP reply code (2xx, 4xx, 5xx) in a text, or 0."""
    match = _REPLY_CODE.search(text or "")
    return int(match.group(1)) if match else 0


def find_command(text: str) -> str:
    """The SMTP command a refusal answered (HELO, MAIL, RCPT, DATA, ...), when the transcript says so.

    Upper-case command words, or the phrases MTAs write ("in reply to RCPT TO command", "after end of
    data", ">>> DATA"); the furthest command in the session wins, since a later one was reached.
    """
    order = ("HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA")
    best = ""
    for match in _COMMAND.finditer(text or ""):
        if match.group(1):
            if match.group(1) != match.group(1).upper():
                continue  # an ordinary word ("data", "mail from"), not a command in a transcript
            word = match.group(1).upper()
        else:
            word = match.group(2).lower()
            word = _COMMAND_NAMES.get(word, word).upper()
        word = _COMMAND_NAMES.get(word.lower(), word.split()[0])
        if not best or order.index(word) > order.index(best):
            best = word
    return best


def _first_pass(reason: str, name: str, text: str, command: str) -> bool:
    """Sisimai's `true()` of one reason: does the code or the text, given the command, point to it."""
    if reason == "userunknown":
        if name == "suspend":
            return False
        if name == "userunknown":
            # 5.1.1 is also put on relaying, blocking, full and moved mailboxes: the words decide then.
            others = ("norelaying", "blocked", "mailboxfull", "hasmoved", "rejected", "notaccept")
            return not any(matches(o, text) for o in others)
        # Sisimai wants the RCPT command seen; most MTAs' notices do not quote it, and recipients are
        # checked at RCPT far more often than after DATA, so an unstated command counts as RCPT here.
        unstated = command == "" and name == ""
        return (command == "RCPT" or unstated) and matches("userunknown", text)
    if reason == "filtered":
        if name == "suspend":
            return False
        if name == "filtered":
            return matches("userunknown", text) or matches("filtered", text)
        if command in _BEFORE_DATA:
            return False
        # "No such user" after the body was sent is a filter speaking, not a missing mailbox.
        return matches("filtered", text) or matches("userunknown", text)
    if reason == "rejected":
        if name == "rejected":
            return True
        if command == "MAIL":
            return matches("rejected", text)
        if command == "DATA":
            return name != "userunknown" and matches("rejected", text)
        return name in ("", "securityerror", "systemerror") and matches("rejected", text)
    if reason == "hostunknown":
        if name == "hostunknown":
            return not matches("networkerror", text)
        return matches("hostunknown", text)
    return name == reason or matches(reason, text)


def reason_of(status: str = "", diagnostic: str = "", smtp_code: int = 0, command: str = "", action: str = "") -> str:
    """The Sisimai-style reason for one failed recipient (see the module docstring)."""
    text = " ".join((diagnostic or "").split())
    status = status or find_status(text)
    smtp_code = smtp_code or find_reply_code(text)
    command = command or find_command(text)
    if status.startswith("2."):
        return "delivered"
    name = _STATUS_NAMES.get(status, "")
    for reason in _FIRST_PASS:
        if _first_pass(reason, name, text, command):
            return reason
    reason = name
    if reason in _RETRY:
        for candidate in _SECOND_PASS:
            if matches(candidate, text):
                return candidate
    if not reason:
        subject = status[:3]
        if subject in ("5.6", "4.6"):
            reason = "contenterror"
        elif subject in ("5.7", "4.7"):
            reason = "securityerror"
        elif re.match(r"(?i)\s*x-(?:unix|postfix)\s*;", diagnostic or ""):
            reason = "mailererror"
        elif 500 <= smtp_code <= 504 or matches("syntaxerror", text):
            reason = "syntaxerror"
        elif action in ("delayed", "expired"):
            reason = "expired"
        elif command in ("HELO", "EHLO"):
            reason = "blocked"
    return reason or ("onhold" if text else "undefined")


def classify(
    status: str = "", diagnostic: str = "", smtp_code: int = 0, command: str = "", action: str = ""
) -> Verdict:
    """Classify one failed recipient from its enhanced status, the server's words, reply code and command."""
    reason = reason_of(status, diagnostic, smtp_code, command, action)
    return Verdict(HARD if reason in HARD_REASONS else SOFT, reason)


def reason_from_text(text: str) -> str:
    """The reason the MTA's words alone give, or '' when they name none we know."""
    for reason in (*_FIRST_PASS, *_SECOND_PASS):
        if matches(reason, text):
            return reason
    return ""


def is_permanent(status: str, smtp_code: int = 0) -> bool:
    """True for an RFC 3463 permanent failure (5.x.x) or a 5xx reply."""
    if status:
        return status.startswith("5")
    return 500 <= smtp_code < 600
