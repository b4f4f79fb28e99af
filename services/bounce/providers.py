"""Reasons that certain mailbox providers' own reply texts and codes give, as Sisimai reads them.

Ported from Sisimai's remote-host rules (p5-sisimai v5.1.0p3, lib/Sisimai/Rhost/*.pm, BSD-2-Clause,
(c) azumakuniyuki; licence in services/bounce/SISIMAI-LICENSE). A provider is recognised
by the host that refused the message (Remote-MTA, the host named in the notice, or the bounce's first
Received header) or by the recipient's domain; its rules are asked before the generic ones, and a rule
that does not decide leaves the generic rules to it.
"""

from __future__ import annotations

import re

# Host name suffixes (or whole names) of each provider's receiving servers.
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "apple": (".mail.icloud.com", ".apple.com", ".me.com"),
    "cox": ("cox.net",),
    "franceptt": (".laposte.net", ".orange.fr", ".wanadoo.fr"),
    "godaddy": ("smtp.secureserver.net", "mailstore1.secureserver.net"),
    "google": ("aspmx.l.google.com", "gmail-smtp-in.l.google.com"),
    "iua": (".email.ua",),
    "kddi": (".ezweb.ne.jp", "msmx.au.com"),
    "microsoft": (".prod.outlook.com", ".protection.outlook.com"),
    "mimecast": (".mimecast.com",),
    "nttdocomo": ("mfsmax.docomo.ne.jp",),
    "spectrum": ("charter.net",),
    "tencent": (".qq.com",),
    "yahooinc": (".yahoodns.net",),
}

APPLE_WORDS: dict[str, tuple] = {
    "authfailure": (
        "s dmarc policy",
        "blocked for failing both spf and dkim autentication checks",
    ),
    "blocked": (
        "rejected due to having a domain present in the spamhaus",
        "rejected due to listing in spamhaus",
        "blocked - see https://support.proofpoint.com/dnsbl-lookup",
        "not accepting connections",
    ),
    "hasmoved": ("recipient no longer on server",),
    "mailboxfull": ("user is over quota",),
    "norelaying": ("relay access denied",),
    "notaccept": ("host/domain does not accept mail",),
    "policyviolation": ("due to local policy",),
    "rejected": ("sender address rejected",),
    "speeding": ("due to excessive volume",),
    "userunknown": (
        "inactive email address",
        "user does not exist",
        "unknown or illegal alias",
    ),
}

COX_WORDS: dict[str, tuple] = {
    "blocked": (
        "cox too many bad commands from",
        "too many invalid recipients",
    ),
    "policyviolation": (
        "esmtp no data before greeting",
        "attachment extension is forbidden",
    ),
    "rejected": ("sender rejected",),
    "requireptr": (
        "dns check failure - try again later",
        "rejected - no rdns",
    ),
    "systemerror": ("esmtp server temporarily not available",),
    "toomanyconn": (
        "too many sessions from",
        "requested action aborted: try again later",
        "message threshold exceeded",
    ),
    "userunknown": ("recipient rejected",),
}

FRANCEPTT_WORDS: dict[str, tuple] = {
    "authfailure": ("spf/dns de votre nom de domaine",),
}

GODADDY_WORDS: dict[str, tuple] = {
    "blocked": (
        "rbl reject",
        "www.spamhaus.org/query/bl?ip=",
    ),
    "expired": (
        "has been in the queue too long",
        "delivery timeout",
    ),
    "mailboxfull": ("account storage limit",),
    "spamdetected": ("message rejected for spam or virus content",),
    "suspend": ("account disabled",),
    "systemerror": ("message is looping",),
    "userunknown": (
        "recipient not found",
        "account does not exist",
    ),
}

GOOGLE_WORDS: dict[str, tuple] = {
    "authfailure": (
        ("451", "4.7.24", "the spf record of the sending domain"),
        ("550", "5.7.24", "the spf record of the sending domain"),
        ("421", "4.7.26", "senders to authenticate with either spf or dkim"),
        ("550", "5.7.26", "senders to authenticate with either spf or dkim"),
        ("550", "5.7.26", "fails to pass spf checks for an spf record with a hard fail"),
        ("550", "5.7.26", "has an spf record with a hard fail policy"),
        ("451", "4.7.26", "is not accepted due to domain's dmarc policy"),
        ("550", "5.7.26", "is not accepted due to domain's dmarc policy"),
        ("550", "5.7.26", "is not accepted due to domain's dmarc policy"),
        ("550", "5.7.1", "fails to pass authentication checks"),
        ("550", "5.7.26", "fails to pass authentication checks"),
        ("421", "4.7.27", "senders to authenticate with spf"),
        ("421", "4.7.27", "senders to authenticate their email with spf"),
        ("550", "5.7.27", "senders to authenticate with spf"),
        ("421", "4.7.30", "senders to authenticate their email with dkim"),
        ("550", "5.7.30", "senders to authenticate with dkim"),
        ("421", "4.7.32", "aligned with either the authenticated spf or dkim"),
    ),
    "badreputation": (
        ("421", "4.7.0", "very low reputation of the sending ip address"),
        ("421", "4.7.0", "very low reputation of the sending domain"),
        ("550", "5.7.1", "due to the very low reputation of the sending ip address"),
        ("550", "5.7.1", "due to the very low reputation of the sending domain"),
    ),
    "blocked": (
        ("421", "4.7.0", "ip not in whitelist for rcpt domain"),
        ("421", "4.7.0", "try again later, closing connection."),
        ("501", "5.5.4", "empty helo/ehlo argument not allowed"),
        ("501", "5.5.4", "helo/ehlo argument is invalid"),
        ("421", "4.7.0", "an unusual rate of unsolicited mail"),
        ("421", "4.7.28", "an unusual rate of mail"),
        ("550", "5.7.1", "an unusual rate of unsolicited mail"),
        ("550", "5.7.28", "an unusual rate of unsolicited mail"),
    ),
    "exceedlimit": (
        ("552", "5.2.3", "exceeded google's message size limits"),
        ("552", "5.3.4", "exceeds google's limit of limit attachments."),
        ("552", "5.3.4", "your message exceeded google's message header size limits"),
        ("552", "5.3.4", "bytes per individual header size"),
        ("552", "5.3.4", "exceeds google's header name limit of"),
        ("552", "5.3.4", "exceeds google's message header size limit"),
    ),
    "expired": (
        ("421", "4.7.0", "connection expired"),
        ("451", "4.4.2", "timeout - closing connection"),
    ),
    "mailboxfull": (
        ("452", "4.2.2", "inbox is out of storage space"),
        ("552", "5.2.2", "inbox is out of storage space and inactive"),
        ("452", "4.2.2", "is over quota"),
        ("552", "5.2.2", "is over quota"),
        ("550", "5.7.1", "email quota exceeded"),
    ),
    "mesgtoobig": (
        ("552", "5.3.4", "exceeded google's message size limits"),
        ("552", "5.3.4", "exceeds google's message size limit of"),
    ),
    "networkerror": (
        ("554", "5.4.6", "message exceeded 50 hops"),
        ("554", "5.6.0", "message exceeded 50 hops"),
    ),
    "norelaying": (
        ("550", "5.7.0", "mail relay denied"),
        ("550", "5.7.1", "invalid credentials for relay"),
        ("550", "5.7.1", "is not authorized to send email directly to our servers"),
    ),
    "notcompliantrfc": (
        ("550", "5.7.1", "missing a valid address in the from: header"),
        ("550", "5.7.1", "multiple addresses in from: header are not accepted"),
        ("550", "5.7.1", "is not rfc 5322 compliant"),
        ("550", "5.7.1", "missing a valid message-id: header"),
        ("550", "5.7.1", "contains a unicode character in a disallowed header"),
        ("550", "5.7.1", "encoded-word syntax is not permitted"),
        ("553", "5.1.7", "is not a valid rfc 5321 address"),
        ("554", "5.6.0", "mail message is malformed"),
    ),
    "policyviolation": (
        ("552", "5.7.0", "illegal attachment on your message"),
        ("552", "5.7.0", "blocked because its content presents a potential security issue"),
        ("550", "5.7.1", "you are sending to (or from) has a policy that prohibited"),
        ("421", "4.7.28", "sending messages with the same message-id:"),
    ),
    "rejected": (
        ("550", "5.7.0", "mail sending denied"),
        ("550", "5.7.1", "unauthenticated email is not accepted"),
    ),
    "requireptr": (
        ("421", "4.7.0", "does not have a ptr record"),
        ("421", "4.7.23", " have a ptr record, or the ptr record"),
        ("550", "5.7.1", "does not meet ipv6 sending guidelines regarding ptr records and authentication"),
        ("550", "5.7.25", "does not have a ptr record"),
        ("550", "5.7.25", "does not match the ip address of the hostname"),
    ),
    "securityerror": (
        ("421", "4.7.0", "tls required for rcpt domain"),
        ("454", "4.7.0", "too many login attempts"),
        ("501", "5.5.2", "cannot decode response"),
        ("503", "5.7.0", "no identity changes permitted"),
        ("530", "5.5.1", "authentication required."),
        ("530", "5.7.0", "authentication required."),
        ("535", "5.7.1", "application-specific password required"),
        ("535", "5.7.9", "application-specific password required"),
        ("535", "5.7.1", "please log in with your web browser"),
        ("534", "5.7.9", "please log in with your web browser"),
        ("534", "5.7.14", "please log in through your web browser"),
        ("535", "5.7.1", "username and password not accepted"),
        ("535", "5.7.8", "username and password not accepted"),
        ("421", "4.7.29", "senders to use tls/ssl for smtp"),
        ("550", "5.7.29", "senders to use tls/ssl for smtp"),
    ),
    "spamdetected": (
        ("421", "4.7.0", "due to the nature of the content or the links within"),
        ("550", "5.7.1", "likely unsolicited mail"),
    ),
    "speeding": (
        ("450", "4.2.1", "is receiving mail too quickly"),
        ("450", "4.2.1", "peak smtp relay limit exceeded for customer"),
        ("450", "4.2.1", "rate that prevents additional messages from being delivered"),
        ("550", "5.2.1", "rate that prevents additional messages from being delivered"),
        ("550", "5.4.5", "daily sending quota exceeded"),
        ("550", "5.4.5", "daily user sending limit exceeded"),
        ("550", "5.4.5", "daily smtp relay limit exceeded for"),
        ("550", "5.7.1", "daily smtp relay limit exceeded for"),
        ("550", "5.7.1", "daily smtp relay sending limit exceeded for"),
        ("550", "5.7.1", "this mail has been rate limited"),
    ),
    "suspend": (
        ("550", "5.2.1", "account that you tried to reach is disabled"),
        ("550", "5.2.1", "account that you tried to reach is inactive"),
    ),
    "syntaxerror": (
        ("451", "4.5.0", "smtp protocol violation"),
        ("454", "4.5.0", "smtp protocol violation"),
        ("525", "5.7.10", "smtp protocol violation"),
        ("535", "5.5.4", "optional argument not permitted"),
        ("454", "5.5.1", "starttls may not be repeated"),
        ("501", "5.7.11", "syntax error"),
        ("501", "5.5.2", "syntax error"),
        ("555", "5.5.2", "syntax error"),
        ("502", "5.5.1", "too many unrecognized commands, goodbye"),
        ("502", "5.5.1", "unimplemented command"),
        ("502", "5.5.1", "unrecognized command"),
        ("503", "5.5.1", "bad sequence of commands"),
        ("503", "5.5.1", "ehlo/helo first"),
        ("503", "5.5.1", "mail first"),
        ("503", "5.5.1", "rcpt first"),
        ("503", "5.5.1", "no data after bdat"),
        ("504", "5.7.4", "unrecognized authentication type"),
        ("504", "5.7.4", "xoauth is no longer supported"),
        ("530", "5.7.0", "must issue a starttls command first"),
        ("554", "5.7.0", "too many unauthenticated commands"),
    ),
    "systemerror": (
        ("421", "4.3.0", "temporary system problem"),
        ("421", "4.7.0", "temporary system problem"),
        ("421", "4.4.5", "server busy"),
        ("451", "4.3.0", "multiple destination domains per transaction is unsupported"),
        ("451", "4.3.0", "mail server has temporarily rejected this message"),
        ("451", "4.3.0", "mail server temporarily rejected message"),
        ("452", "4.5.3", "domain policy size per transaction exceeded"),
        ("454", "4.7.0", "cannot authenticate due to temporary system problem"),
    ),
    "toomanyconn": (
        ("452", "4.5.3", "your message has too many recipients"),
        ("550", "5.5.3", "too many recipients for this sender"),
    ),
    "userunknown": (
        ("550", "5.1.1", "the email account that you tried to reach does not exist"),
        ("553", "5.1.2", "we weren't able to find the recipient domain"),
        ("553", "5.1.3", "is not a valid rfc 5321 address"),
    ),
}

KDDI_WORDS: dict[str, tuple] = {
    "filtered": ("550 : user unknown",),
    "userunknown": (">: user unknown",),
}

MICROSOFT_WORDS: dict[str, tuple] = {
    "authfailure": (
        ("4.7.26", 0, 0, "must pass either spf or dkim validation, this message is not signed"),
        ("4.7.323", 0, 0, "tlsa-invalid: the domain failed dane validation"),
        ("5.7.323", 0, 0, "tlsa-invalid: the domain failed dane validation"),
        ("4.7.324", 0, 0, "dnssec-invalid: destination domain returned invalid dnssec records"),
        ("5.7.324", 0, 0, "dnssec-invalid: destination domain returned invalid dnssec records"),
        (
            "4.7.325",
            0,
            0,
            "certificate-host-mismatch: remote certificate must have a "
            "common name or subject alternative name matching the hostname (dane)",
        ),
        (
            "5.7.325",
            0,
            0,
            "certificate-host-mismatch: remote certificate must have a "
            "common name or subject alternative name matching the hostname (dane)",
        ),
        ("5.7.23", 0, 0, "the message was rejected because of sender policy framework violation"),
        ("5.7.322", 0, 0, "certificate-expired: destination mail server's certificate is expired"),
        ("5.7.509", 0, 0, "does not pass dmarc verification"),
    ),
    "badreputation": (("4.7.650", 0, 0, "has been temporarily rate limited due to ip reputation"),),
    "blocked": (
        ("4.4.2", 0, 0, "connection dropped"),
        ("4.7.", 850, 899, "access denied, please try again later"),
        ("5.7.25", 0, 0, "must have a reverse dns record"),
        ("5.7.506", 0, 0, "access denied, bad helo"),
        ("5.7.507", 0, 0, "access denied, rejected by recipient"),
        ("5.7.510", 0, 0, "does not accept email over ipv6"),
        ("5.7.511", 0, 0, "access denied, banned sender"),
        ("5.7.513", 0, 0, "using customer block list"),
        ("5.7.", 606, 649, "access denied, banned sending ip "),
        ("4.7.", 500, 699, "access denied, please try again later"),
        ("5.5.4", 0, 0, "invalid domain name"),
        ("5.7.51", 0, 0, "restrictdomainstoipaddresses or restrictdomainstocertificate"),
        ("5.7.1", 0, 0, "part of their network is on our block list (s3150)"),
    ),
    "contenterror": (
        ("5.3.0", 0, 0, "too many related errors"),
        ("5.6.11", 0, 0, "invalid characters"),
        ("5.4.11", 0, 0, "agent generated message depth exceeded"),
        ("5.5.6", 0, 0, "invalid message content"),
    ),
    "exceedlimit": (("5.2.3", 0, 0, "resolver.rst.recipsizelimit; message too large for this recipient"),),
    "expired": (
        ("4.4.1", 0, 0, "connection timed out"),
        ("4.4.7", 0, 0, "message delayed"),
        ("4.4.7", 0, 0, "queue expired; message expired"),
        ("4.4.7", 0, 0, "message expired"),
        ("5.4.300", 0, 0, "message expired"),
    ),
    "mailboxfull": (("5.2.2", 0, 0, "mailbox full"),),
    "mesgtoobig": (
        ("5.3.4", 0, 0, "message size exceeds fixed maximum message size"),
        ("5.3.4", 0, 0, "message too big for system"),
    ),
    "networkerror": (
        ("5.4.4", 0, 0, "smtpsend.dns.nonexistentdomain; nonexistent domain"),
        ("5.4.6", 0, 0, "hop count exceeded - possible mail loop"),
        ("4.4.316", 0, 0, "connection refused"),
        ("5.4.4", 0, 0, "invalid arguments"),
        ("5.4.6", 0, 0, "routing loop detected"),
        ("5.4.14", 0, 0, "routing loop detected"),
    ),
    "norelaying": (
        ("5.7.1", 0, 0, "unable to relay"),
        ("5.7.1", 0, 0, "client was not authenticated"),
        ("5.4.1", 0, 0, "relay access denied"),
        ("5.7.1", 0, 0, "unable to relay"),
        ("5.7.64", 0, 0, "tenantattribution; relay access denied"),
        ("5.4.310", 0, 0, "does not exist"),
    ),
    "notaccept": (
        ("4.3.2", 0, 0, "system not accepting network messages"),
        ("4.4.4", 0, 0, "hosted tenant which has no mail-enabled subscriptions"),
        ("5.3.2", 0, 0, "storedrv.deliver: missing or bad storedriver mdb properties"),
    ),
    "policyviolation": (
        ("5.0.350", 0, 0, "x-dg-ref header is too long"),
        ("5.0.350", 0, 0, "requested action not taken: policy violation detected (as345)"),
        ("5.7.", 900, 999, "delivery not authorized, message refused"),
    ),
    "rejected": (
        ("5.1.7", 0, 0, "invalid address"),
        ("5.1.7", 0, 0, "unknown sender address"),
        ("5.1.0", 0, 0, "sender denied"),
        ("5.1.8", 0, 0, "access denied, bad outbound sender"),
        ("5.7.1", 0, 0, "delivery not authorized"),
        ("5.7.12", 0, 0, "sender was not authenticated by organization"),
        ("5.7.124", 0, 0, "sender not in allowed-senders list"),
        ("5.7.133", 0, 0, "sender not authenticated for group"),
        ("5.7.134", 0, 0, "sender was not authenticated for mailbox"),
        ("5.7.13", 0, 0, "sender was not authenticated for public folder"),
        ("5.7.135", 0, 0, "sender was not authenticated for public folder"),
        ("5.7.136", 0, 0, "sender was not authenticated"),
        ("5.7.", 501, 503, "access denied, spam abuse detected"),
        ("5.7.512", 0, 0, "access denied, message must be rfc 5322 section 3.6.2 compliant"),
        ("5.7.750", 0, 0, "service unavailable. client blocked from sending from unregistered domains"),
        ("5.7.", 501, 503, "access denied, banned sender"),
    ),
    "securityerror": (
        ("5.7.3", 0, 0, "cannot achieve exchange server authentication"),
        ("5.7.3", 0, 0, "not authorized"),
        ("4.4.317", 0, 0, "starttls is required to send mail"),
        ("5.4.317", 0, 0, "starttls is required to send mail"),
        ("4.7.321", 0, 0, "starttls-not-supported: destination mail server must support tls to receive mail"),
        ("5.7.321", 0, 0, "starttls-not-supported: destination mail server must support tls to receive mail"),
        ("5.7.1", 0, 0, "client was not authenticated"),
        ("5.7.57", 0, 0, "client was not authenticated to send anonymous mail during mail from"),
    ),
    "spamdetected": (("5.2.1", 0, 0, "content filter agent quarantined this message"),),
    "speeding": (
        ("4.3.2", 0, 0, "storedrv.deliver; recipient thread limit exceeded"),
        ("5.1.90", 0, 0, "your message can't be sent because you've reached your daily limit for message recipients"),
        ("5.2.2", 0, 0, "submission quota exceeded"),
        ("5.2.121", 0, 0, "recipient's per hour message receive limit from specific sender exceeded"),
        ("5.2.122", 0, 0, "recipient's per hour message receive limit exceeded"),
        ("5.7.508", 0, 0, "has exceeded permitted limits within"),
        ("5.7.", 700, 749, "access denied, tenant has exceeded threshold"),
        ("5.7.", 700, 749, "access denied, traffic not accepted from this ip"),
    ),
    "suspend": (
        ("5.7.504", 0, 0, "recipient address rejected: access denied"),
        ("5.7.505", 0, 0, "access denied, banned recipient"),
        ("5.2.1", 0, 0, "mailbox cannot be accessed"),
    ),
    "syntaxerror": (
        ("5.3.3", 0, 0, "unrecognized command"),
        ("5.5.2", 0, 0, "send hello first"),
    ),
    "systemerror": (
        ("4.3.2", 0, 0, "service not available"),
        ("4.3.2", 0, 0, "service not active"),
        ("5.3.5", 0, 0, "system incorrectly configured"),
        (
            "5.3.190",
            0,
            0,
            "journaling on-premises messages to microsoft 365 or "
            "office 365 not supported when journaling archive is disabled",
        ),
        ("5.0.0", 0, 0, "helo / ehlo requires domain address"),
        ("5.1.4", 0, 0, "destination mailbox address ambiguous"),
        ("5.2.4", 0, 0, "mailing list expansion problem"),
        ("5.2.14", 0, 0, "misconfigured forwarding address"),
        ("4.4.3", 0, 0, "temporary server error. please try again later attr18"),
        ("4.7.0", 0, 0, "temporary server error. please try again later. prx4 nexthop:"),
        ("4.4.24", 0, 0, "message failed to be replicated: insufficient system resource:"),
        (
            "4.4.25",
            0,
            0,
            "message failed to be replicated: no healthy secondary server available to accept replica at this time.",
        ),
        ("4.4.28", 0, 0, "message failed to be replicated: the operation was canceled"),
        ("4.4.318", 0, 0, "(suspiciousremoteservererror)"),
        ("5.4.318", 0, 0, "(suspiciousremoteservererror)"),
        ("4.7.500", 0, 0, "server busy. please try again later from "),
        ("4.7.700", 0, 0, "pfa agent busy, please try again."),
    ),
    "systemfull": (("4.3.1", 0, 0, "insufficient system resources"),),
    "toomanyconn": (
        ("5.5.3", 0, 0, "too many recipients"),
        ("4.5.3", 0, 0, "too many recipients"),
        ("5.2.122", 0, 0, "the recipient has exceeded their limit for"),
    ),
    "userunknown": (
        ("5.1.1", 0, 0, "resolver.adr.exrecipnotfound; not found"),
        ("5.1.1", 0, 0, "user unknown"),
        ("5.1.3", 0, 0, "storedrv.submit; invalid recipient address"),
        ("5.1.", 4, 5, "recipient address reserved by rfc 2606"),
        ("5.1.6", 0, 0, "recipient addresses in single label domains not accepted"),
        ("5.1.1", 0, 0, "bad destination mailbox address"),
        ("5.1.10", 0, 0, "recipient not found"),
        ("5.4.1", 0, 0, "recipient address rejected: access denied"),
        ("5.5.0", 0, 0, "requested action not taken: mailbox unavailable"),
        ("5.1.2", 0, 0, "invalid x.400 address"),
    ),
}

MIMECAST_WORDS: dict[str, tuple] = {
    "authfailure": (
        (550, "spf sender invalid - envelope rejected"),
        (550, "dkim sender invalid - envelope rejected"),
        (550, "dmarc sender invalid - envelope rejected"),
    ),
    "badreputation": (
        (451, "internal resources are temporarily unavailable"),
        (550, "local ct ip reputation - (reject)"),
    ),
    "blocked": (
        (421, "sender address blocked"),
        (451, "recipient temporarily unavailable"),
        (451, "ip temporarily blacklisted"),
    ),
    "expired": ((550, "journal messages past the expiration"),),
    "mesgtoobig": ((554, "maximum email size exceeded"),),
    "networkerror": (
        (451, "the incorrect hostname used for inbounds"),
        (550, "the incorrect hostname used for inbounds"),
        (554, "mail loop detected"),
    ),
    "norelaying": (
        (451, "open relay not allowed"),
        (451, "open relay is not allowed"),
    ),
    "notaccept": ((451, "account inbounds disabled"),),
    "onhold": (
        (451, "account outbounds disabled"),
        (451, "hostname is not authorized"),
        (550, "journal message past expiration"),
    ),
    "policyviolation": (
        (550, "anti-spoofing policy - inbound not allowed"),
        (550, "rejected by header-based anti-spoofing policy"),
        (550, "message bounced due to content examination policy"),
        (554, "host network not allowed"),
        (554, "host network, not allowed"),
    ),
    "rejected": (
        (550, "administrative prohibition envelope blocked"),
        (550, "envelope blocked - user entry"),
        (550, "envelope blocked - user domain entry"),
        (550, "rejected by header-based manually blocked senders - block for manual block"),
        (550, "rejected by header-based blocked senders - block policy for header from"),
        (550, "envelope rejected - block policy for envelope from address"),
    ),
    "securityerror": (
        (535, "incorrect authentication data"),
        (550, "submitter failed to disabled"),
        (550, "submitter failed to authenticate"),
        (553, "this route requires encryption (tls)"),
        (553, "this route requires tls version 1.2 or greater"),
        (553, "this route requires high-strength ciphers"),
        (554, "configuration is invalid for this certificate"),
    ),
    "systemerror": (
        (451, "unable to process connection at this time"),
        (451, "message ended early"),
        (451, "unable to process command"),
        (451, "unable to process an email at this time"),
    ),
    "toomanyconn": (
        (451, "account service is temporarily unavailable"),
        (452, "too many recipients"),
        (550, "exceeding outbound thread limit"),
    ),
    "userunknown": (
        (501, "invalid address"),
        (503, "user unknown"),
        (550, "invalid recipient"),
    ),
    "virusdetected": ((554, "email rejected due to security policies"),),
}

TENCENT_WORDS: dict[str, tuple] = {
    "authfailure": (
        "spf check failed",
        "dmarc check failed",
    ),
    "blocked": (
        "suspected bounce attacks",
        "suspected spam ip",
        "connection denied",
    ),
    "mesgtoobig": ("message too large",),
    "rejected": (
        "suspected spam",
        "mail is rejected by recipients",
    ),
    "spandetected": (
        "spam is embedded in the email",
        "mail content denied",
    ),
    "speeding": ("mailbox unavailable or access denined",),
    "suspend": ("is a deactivated mailbox",),
    "syntaxerror": ("bad address syntax",),
    "toomanyconn": (
        "ip frequency limited",
        "domain frequency limited",
        "sender frequency limited",
        "connection frequency limited",
    ),
    "userunknown": ("mailbox not found",),
}

YAHOOINC_WORDS: dict[str, tuple] = {
    "authfailure": ("yahoo requires all senders to authenticate with either spf or dkim",),
    "blocked": (
        " because the ip is in spamhaus's list;",
        "not accepted from ip addresses on spamhaus xbl",
    ),
    "norelaying": ("relaying denied for ",),
    "notcompliantrfc": ("headers are not rfc compliant",),
    "policyviolation": ("not accepted for policy reasons",),
    "rejected": (
        "temporarily deferred due to unexpected volume or user complaints",
        "due to unresolvable rfc.5321 domain",
        " will be permanently deferred",
    ),
    "speeding": ("user is receiving mail too quickly",),
    "suspend": (
        " is no longer valid.",
        "this mailbox is disabled",
    ),
    "syntaxerror": ("syntax error in parameters or arguments",),
    "toomanyconn": ("max message per connection reached",),
    "userunknown": (
        "dd this user doesn't have a ",
        "mailbox not found",
    ),
}

COX_CODES: dict[str, str] = {
    "CDRBL": "blocked",
    "CXBL": "blocked",
    "CXCNCT": "toomanyconn",
    "CXDNS": "requireptr",
    "CXMJ": "securityerror",
    "CXMXRT": "toomanyconn",
    "CXSMTP": "rejected",
    "CXSNDR": "authfailure",
    "CXTHRT": "securityerror",
    "IPBL00001": "blocked",
    "IPBL0001": "blocked",
    "IPBL0010": "blocked",
    "IPBL0011": "blocked",
    "IPBL0100": "blocked",
    "IPBL0101": "blocked",
    "IPBL0110": "blocked",
    "IPBL0111": "blocked",
    "IPBL1000": "blocked",
    "IPBL1001": "blocked",
    "IPBL1010": "blocked",
    "IPBL1011": "blocked",
    "IPBL1100": "blocked",
    "IPBL1101": "blocked",
    "IPBL1110": "blocked",
    "IPBL1111": "blocked",
    "URLBL011": "spamdetected",
    "URLBL1001": "spamdetected",
    "URLBL101": "spamdetected",
    "URLBL110": "spamdetected",
}

FRANCEPTT_CODES: dict[str, str] = {
    "101": "blocked",
    "102": "blocked",
    "103": "blocked",
    "104": "toomanyconn",
    "105": "",
    "107": "",
    "108": "",
    "109": "",
    "201": "",
    "305": "securityerror",
    "401": "authfailure",
    "402": "securityerror",
    "403": "rejected",
    "405": "rejected",
    "415": "rejected",
    "416": "userunknown",
    "417": "mailboxfull",
    "420": "suspend",
    "421": "rejected",
    "423": "",
    "424": "",
    "426": "suspend",
    "505": "systemerror",
    "506": "spamdetected",
    "510": "blocked",
    "513": "",
    "514": "mesgtoobig",
    "517": "authfailure",
    "630": "policyviolation",
    "999": "blocked",
}

GODADDY_CODES: dict[str, str] = {
    "IB007": "toomanyconn",
    "IB101": "speeding",
    "IB103": "badreputation",
    "IB104": "blocked",
    "IB105": "blocked",
    "IB106": "blocked",
    "IB108": "requireptr",
    "IB110": "blocked",
    "IB111": "blocked",
    "IB112": "blocked",
    "IB113": "blocked",
    "IB212": "spamdetected",
    "IB401": "securityerror",
    "IB501": "notcompliantrfc",
    "IB502": "notcompliantrfc",
    "IB504": "speeding",
    "IB506": "rejected",
    "IB508": "authfailure",
    "IB510": "speeding",
    "IB605": "toomanyconn",
    "IB607": "speeding",
    "IB705": "virusdetected",
}

IUA_CODES: dict[str, str] = {
    "1": "norelaying",
    "10": "filtered",
    "2": "userunknown",
    "3": "suspend",
    "4": "mailboxfull",
    "5": "toomanyconn",
    "6": "norelaying",
    "7": "blocked",
    "8": "rejected",
    "9": "blocked",
}
# Spectrum's AUP#nnnn codes: (first, last or 0 for just the first, reason).
SPECTRUM_CODES: tuple[tuple[int, int, str], ...] = (
    (1000, 0, "blocked"), (1010, 0, "rejected"), (1020, 1080, "rejected"), (1090, 0, "systemerror"),
    (1100, 1150, "requireptr"), (1160, 1190, "policyviolation"), (1200, 1210, "blocked"), (1220, 1250, "blocked"),
    (1260, 0, "networkerror"), (1300, 1340, "toomanyconn"), (1350, 1490, "speeding"), (1500, 0, "rejected"),
    (1520, 0, "rejected"), (1530, 0, "mesgtoobig"), (1540, 0, "speeding"), (1550, 0, "speeding"),
    (1560, 0, "policyviolation"), (1580, 0, "speeding"),
)  # fmt: skip
NTTDOCOMO_WORDS: dict[str, tuple[str, ...]] = {
    "mailboxfull": ("552 too much mail data",),
    "toomanyconn": ("552 too many recipients",),
    "syntaxerror": ("503 bad sequence of commands", "504 command parameter not implemented"),
}

# Exchange Online's own enhanced codes (Microsoft's list of NDR codes, as Sisimai's Office365 module has
# it); only those that mean one thing there, not the generic 5.7.1 or 4.4.7.
MICROSOFT_STATUS: tuple[tuple[str, str], ...] = (
    (r"4\.4\.312", "networkerror"), (r"4\.4\.316", "expired"), (r"4\.7\.[56]\d\d", "blocked"),
    (r"4\.7\.8[5-9]\d", "blocked"), (r"5\.0\.350", "contenterror"), (r"5\.4\.312", "networkerror"),
    (r"5\.4\.316", "expired"), (r"5\.6\.11", "contenterror"), (r"5\.7\.1[23]", "rejected"),
    (r"5\.7\.124", "rejected"), (r"5\.7\.13[3-6]", "rejected"), (r"5\.7\.50[1-3]", "spamdetected"),
    (r"5\.7\.50[45]", "filtered"), (r"5\.7\.50[67]", "blocked"), (r"5\.7\.508", "toomanyconn"),
    (r"5\.7\.509", "authfailure"), (r"5\.7\.510", "notaccept"), (r"5\.7\.511", "rejected"),
    (r"5\.7\.512", "policyviolation"), (r"5\.7\.57", "securityerror"), (r"5\.7\.60[6-9]", "blocked"),
    (r"5\.7\.6[1-4]\d", "blocked"), (r"5\.7\.7[0-4]\d", "toomanyconn"),
)  # fmt: skip

_FRANCEPTT_CODE = re.compile(r"\b(LPN|LPNAAA|OFR|OUK)(_[0-9]{3}|[0-9]{3}[-_][0-9]{3})\b", re.IGNORECASE)
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


# A host name followed by its address, as MTAs name the server that answered: "mx.example.net[192.0.2.1]".
_HOST_WITH_ADDRESS = re.compile(
    r"([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+)\.?\s*[\[(](?:\d{1,3}\.){3}\d{1,3}[\])]",
    re.IGNORECASE,
)


def hosts_named(text: str) -> tuple[str, ...]:
    """The server host names a notice or diagnostic mentions with their addresses."""
    return tuple(m.group(1).lower() for m in _HOST_WITH_ADDRESS.finditer(text or ""))


def provider_of(hosts: tuple[str, ...], domain: str) -> str:
    """The provider whose servers one of the hosts is, or whose name the recipient's domain is part of."""
    hosts = tuple(h.lower().strip("[]().") for h in hosts if h)
    domain = domain.lower()
    for provider, suffixes in PROVIDER_HOSTS.items():
        if any(suffix in host for host in hosts for suffix in suffixes):
            return provider
        # The recipient's domain is the provider's own (Sisimai takes any part of a name: "e.com" would
        # be Apple's ".me.com"; only whole labels count here).
        if domain and any(suffix.lstrip(".") == domain or suffix.endswith("." + domain) for suffix in suffixes):
            return provider
    return ""


def provider_in_reply(reply: str) -> str:
    """The provider a reply alone shows: a host it names, or Google's " gsmtp" signature."""
    if re.search(r"\sgsmtp\b", reply or ""):
        return "google"
    # Exchange Online ends its replies with the answering server in brackets: "[BN3P...prod.outlook.com ...]".
    bracketed = tuple(
        h.lower() for h in re.findall(r"\[([a-z0-9-]+(?:\.[a-z0-9-]+)+)[\] ]", reply or "", re.IGNORECASE)
    )
    return provider_of((*hosts_named(reply), *bracketed), "")


def _words(table: dict[str, tuple], text: str) -> str:
    for reason, fragments in table.items():
        if any(fragment in text for fragment in fragments):
            return reason
    return ""


def provider_reason(provider: str, status: str, reply_code: int, diagnostic: str, command: str = "") -> str:
    """The reason a provider's rules give for its reply, or '' when they do not decide."""
    if not provider or not diagnostic:
        return ""
    text = " ".join(diagnostic.lower().split())
    if provider in ("apple", "kddi", "tencent", "yahooinc"):
        return _words(globals()[f"{provider.upper()}_WORDS"], text)
    if provider == "franceptt":
        match = _FRANCEPTT_CODE.search(diagnostic)
        if match:
            return FRANCEPTT_CODES.get((match.group(1) + match.group(2))[-3:], "") or "undefined"
        return _words(FRANCEPTT_WORDS, text)
    if provider == "cox":
        match = re.search(r"AUP#([0-9A-Z]+)", diagnostic)
        return (COX_CODES.get(match.group(1), "") if match else "") or _words(COX_WORDS, text)
    if provider == "godaddy":
        at = diagnostic.find(" IB")
        found = GODADDY_CODES.get(diagnostic[at + 1 : at + 6], "") if at > 1 else ""
        return found or _words(GODADDY_WORDS, text)
    if provider == "iua":
        match = re.search(r"\.i\.ua/err/(\d{1,2})", text)
        return IUA_CODES.get(match.group(1), "") if match else ""
    if provider == "spectrum":
        match = re.search(r"AUP#[-A-Za-z]*(\d{4})", diagnostic)
        number = int(match.group(1)) if match else 0
        for first, last, reason in SPECTRUM_CODES:
            if number == first or (last and first <= number <= last):
                return reason
        return ""
    if provider == "google":
        return _google(status, reply_code, text)
    if provider == "microsoft":
        return _microsoft(status, text) or next(
            (reason for pattern, reason in MICROSOFT_STATUS if re.fullmatch(pattern, status)), ""
        )
    if provider == "mimecast":
        for reason, entries in MIMECAST_WORDS.items():
            if any(reply_code == code and fragment in text for code, fragment in entries):
                return reason
        return ""
    if provider == "nttdocomo":
        if status in ("5.1.1", "5.0.911"):
            return "userunknown"
        if status == "5.2.0":
            return "filtered"
        found = _words(NTTDOCOMO_WORDS, text)
        if not found and status == "5.0.0":
            found = {"RCPT": "userunknown", "DATA": "rejected"}.get(command, "")
        return found
    return ""


def _google(status: str, reply_code: int, text: str) -> str:
    """Google's table: the reply code and status (their last two parts) and the words must all agree."""
    if not (200 <= reply_code < 600) or not _STATUS.match(status):
        return ""
    detail = status[2:]
    reply = str(reply_code)[1:]
    for reason, entries in GOOGLE_WORDS.items():
        for replies, statuses, fragment in entries:
            if fragment in text and reply in replies[1:] and detail in statuses[2:]:
                return reason
    return ""


def _microsoft(status: str, text: str) -> str:
    """Microsoft's table: the status exactly (or a range of its last part) and the words."""
    if not _STATUS.match(status):
        return ""
    last = int(status.rsplit(".", 1)[1])
    for reason, entries in MICROSOFT_WORDS.items():
        for code, low, high, fragment in entries:
            if low == high:
                if status != code:
                    continue
            elif code not in status or not (low <= last <= high):
                continue
            if fragment in text:
                return reason
    return ""
