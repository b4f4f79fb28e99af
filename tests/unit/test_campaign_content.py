"""Campaign drafts are checked before they are stored: addresses, header-safe text, template syntax."""

import pytest

from services.campaigns.content import CampaignDraft, validate_draft
from services.common.errors import InvalidArgument


def draft(**changes) -> CampaignDraft:
    base = dict(
        name="Autumn sale",
        list_ids=(1,),
        from_name="Shop 店",
        from_address="news@example.com",
        reply_to="",
        subject="{{ name }}様、秋のセール",
        html_body="<p>こんにちは {{ name }}</p>",
        text_body="こんにちは {{ name }}",
    )
    base.update(changes)
    return CampaignDraft(**base)


def test_valid_draft_is_kept():
    # A well-formed Japanese campaign passes unchanged (duplicate list ids folded).
    cleaned = validate_draft(draft(list_ids=(1, 1, 2)))
    assert cleaned.list_ids == (1, 2)
    assert cleaned.subject == "{{ name }}様、秋のセール"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.net"}, "subject must not contain line breaks"),
        ({"from_name": "Shop\nX-Evil: 1"}, "from_name must not contain line breaks"),
        ({"from_address": "not-an-address"}, "from_address 'not-an-address' is not an email address"),
        ({"reply_to": "a@b@c"}, "reply_to"),
        ({"subject": ""}, "subject is required"),
        ({"list_ids": ()}, "at least one list"),
        ({"html_body": "", "text_body": ""}, "HTML body, a text body or both"),
        ({"html_body": "{% if %}"}, "html_body has a template error on line 1"),
    ],
)
def test_bad_drafts_are_refused_with_the_reason(changes, message):
    # Header injection, bad addresses, missing parts and broken templates are refused, naming the field.
    with pytest.raises(InvalidArgument, match=message):
        validate_draft(draft(**changes))
