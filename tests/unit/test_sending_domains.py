"""The pure parts of sending domains: names, the SPF merge, the records, and the alignment rule."""

from __future__ import annotations

import re

import pytest

from services.campaigns.domains import (
    Platform,
    PublishedKey,
    check_alignment,
    generate_keys,
    merge_spf,
    normalize_domain,
    records,
)
from services.common.errors import Problem

PLATFORM = Platform("_spf.mailblast.example.com", "bounces.mailblast.example.com")


def test_domain_names_are_stored_lower_case_in_a_labels_and_bad_ones_are_named():
    # What a user types (capitals, a final dot, a Japanese name) is stored one way; a name that is not
    # one is refused with the reason.
    assert normalize_domain(" My-Shop.CO.jp. ") == "my-shop.co.jp"
    assert normalize_domain("例え.jp") == "xn--r8jz45g.jp"
    for bad, reason in (("", "give a domain name"), ("shop", "is not a domain name"), ("-a.jp", "is not a domain"),
                        ("10.0.0.1", "is an address"), ("a b.jp", "is not a domain name")):  # fmt: skip
        with pytest.raises(Problem, match=reason):
            normalize_domain(bad)


def test_our_include_goes_before_the_all_of_an_existing_spf_record_once():
    # An existing record keeps its mechanisms and gets ours before its final `all` (or redirect);
    # one that has it already is unchanged; a domain without one gets a new record.
    include = "_spf.mailblast.example.com"
    assert merge_spf(None, include) == f"v=spf1 include:{include} ~all"
    assert merge_spf("v=spf1 mx include:_spf.google.com -all", include) == (
        f"v=spf1 mx include:_spf.google.com include:{include} -all"
    )
    assert merge_spf("v=spf1 a redirect=_spf.example.net", include) == (
        f"v=spf1 a include:{include} redirect=_spf.example.net"
    )
    assert merge_spf(f"v=spf1 include:{include} ~all", include) == f"v=spf1 include:{include} ~all"


def test_the_records_name_both_keys_and_point_the_return_path_at_the_bounce_domain():
    # Two DKIM TXT records at their selectors, SPF, DMARC at p=none, the return-path CNAME; MTA-STS
    # and TLS-RPT are optional.
    rsa, ed = generate_keys(1)
    assert (rsa.selector, ed.selector) == ("mb1-rsa", "mb1-ed25519")
    assert "BEGIN PRIVATE KEY" in rsa.private_pem and "private_pem" not in repr(rsa)
    keys = [PublishedKey(k.selector, k.algorithm, k.public_record) for k in (rsa, ed)]
    found = {(r.purpose, r.rtype, r.name, r.required) for r in records("shop.jp", keys, PLATFORM, None)}
    assert found == {
        ("dkim-rsa", "TXT", "mb1-rsa._domainkey.shop.jp", True),
        ("dkim-ed25519", "TXT", "mb1-ed25519._domainkey.shop.jp", True),
        ("spf", "TXT", "shop.jp", True),
        ("dmarc", "TXT", "_dmarc.shop.jp", True),
        ("return-path", "CNAME", "mb-bounces.shop.jp", True),
        ("mta-sts", "TXT", "_mta-sts.shop.jp", False),
        ("tls-rpt", "TXT", "_smtp._tls.shop.jp", False),
    }


def test_a_from_must_be_on_a_verified_domain_or_the_platforms():
    # A From on a verified domain or on the platform's own domain aligns; any other is refused, naming both.
    assert check_alignment("Info@My-Shop.co.jp", {"my-shop.co.jp"}) == "my-shop.co.jp"
    assert check_alignment("news@mailblast.example.com", set(), "mailblast.example.com") == "mailblast.example.com"
    refused = "info@other.jp is on other.jp, which is not a verified sending domain"
    with pytest.raises(Problem, match=re.escape(refused)):
        check_alignment("info@other.jp", {"my-shop.co.jp"}, "mailblast.example.com")
    with pytest.raises(Problem, match=re.escape("sub.my-shop.co.jp, which is not a verified")):
        check_alignment("a@sub.my-shop.co.jp", {"my-shop.co.jp"})
