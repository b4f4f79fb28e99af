"""One recipient's signed message: personal fields, MIME, VERP addresses, unsubscribe link, DKIM."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import tracking, verp
from services.sender.dkim import DkimSigner
from services.sender.mime import CrlfMessage, Sender, build_message
from services.sender.render import CompiledContent, recipient_fields
from services.sender.signing import Signing


@dataclass(frozen=True)
class Prepared:
    """A message ready to offer: envelope sender, Message-ID and the signed bytes."""

    envelope_from: str
    message_id: str
    data: bytes


class Composer:
    """Builds the per-recipient message from a campaign's compiled content."""

    def __init__(
        self,
        *,
        key: bytes,
        return_path_domain: str,
        message_id_domain: str,
        unsubscribe_url: str,
        signer: DkimSigner,
        system_return_path: str = "",
        tracking_url: str = "",
    ) -> None:
        self._key = key
        self._return_path_domain = return_path_domain
        self._message_id_domain = message_id_domain
        self._unsubscribe_url = unsubscribe_url
        self._signer = signer
        self._tracking_url = tracking_url
        # Transactional mail names no subscriber, so a VERP address would attribute nothing.
        self._system_return_path = system_return_path or f"bounces@{return_path_domain}"

    def message_id(self, ref: verp.RecipientRef) -> str:
        """The stable Message-ID of one recipient's copy."""
        return verp.message_id(self._key, ref, self._message_id_domain)

    def prepare(
        self,
        *,
        ref: verp.RecipientRef,
        content: CompiledContent,
        sender: Sender,
        email: str,
        name: str,
        attributes_json: str,
        signing: Signing | None = None,
        tracking: bool = False,
    ) -> Prepared:
        """Render, build and sign (`signing`'s keys, else the platform's); raises TemplateProblem or MessageProblem.

        With `tracking` (and SENDER_TRACKING_URL set) the HTML's links go through signed click URLs and an
        open pixel is added; the unsubscribe link, mailto: and tel: links stay as they are.
        """
        rendered = content.render(recipient_fields(email, name, attributes_json))
        html = rendered.html
        if tracking and self._tracking_url and html:
            html = self._tracked(ref, html)
        message_id = self.message_id(ref)
        data = build_message(
            sender=sender,
            to_address=email,
            to_name=name,
            subject=rendered.subject,
            text=rendered.text,
            html=html,
            message_id=message_id,
            unsubscribe_url=self._unsubscribe_url + verp.unsubscribe_token(self._key, ref),
        )
        signer = signing.signer if signing else self._signer
        return_path_domain = (signing.return_path_domain if signing else "") or self._return_path_domain
        return Prepared(
            envelope_from=verp.return_path(self._key, ref, return_path_domain),
            message_id=message_id,
            data=CrlfMessage(signer.sign(data)),
        )

    def _tracked(self, ref: verp.RecipientRef, html: str) -> str:
        def event(kind: str, link: int = 0, url: str = "") -> str:
            found = tracking.TrackedEvent(kind, ref.organization_id, ref.campaign_id, ref.subscriber_id, link, url)
            return f"{self._tracking_url}{kind}/{tracking.make_token(self._key, found)}"

        return tracking.rewrite_html(
            html,
            lambda link, url: event(tracking.CLICK, link, url),
            event(tracking.OPEN),
            untracked_prefixes=(self._unsubscribe_url,),
        )

    def transactional_message_id(self, organization_id: int, message_key: str) -> str:
        """A Message-ID stable per message key, naming the organisation (signed, so it cannot be forged)."""
        return verp.transactional_message_id(self._key, organization_id, message_key, self._message_id_domain)

    def prepare_transactional(
        self,
        *,
        organization_id: int,
        message_key: str,
        category: str,
        content: CompiledContent,
        sender: Sender,
        email: str,
        name: str,
        variables_json: str,
        signing: Signing | None = None,
    ) -> Prepared:
        """Render, build and sign one transactional message; raises TemplateProblem or MessageProblem."""
        rendered = content.render(recipient_fields(email, name, variables_json))
        message_id = self.transactional_message_id(organization_id, message_key)
        unsubscribe_url = ""
        if not category.startswith("auth."):
            # Account mail (resets, lockouts) is not something one unsubscribes from; the rest names
            # the organisation only, as no subscriber stands behind the message.
            ref = verp.RecipientRef(organization_id, 0, 0)
            unsubscribe_url = self._unsubscribe_url + verp.unsubscribe_token(self._key, ref)
        data = build_message(
            sender=sender,
            to_address=email,
            to_name=name,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            unsubscribe_url=unsubscribe_url,
        )
        if signing and signing.return_path_domain:
            # The organisation's own domain: bounces come back under it, so SPF aligns with the From.
            return Prepared(
                envelope_from=f"bounces@{signing.return_path_domain}", message_id=message_id,
                data=CrlfMessage(signing.signer.sign(data)),
            )  # fmt: skip
        return Prepared(
            envelope_from=self._system_return_path, message_id=message_id, data=CrlfMessage(self._signer.sign(data))
        )
