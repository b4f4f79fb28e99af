"""One recipient's signed message: personal fields, MIME, VERP addresses, unsubscribe link, DKIM."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import verp
from services.sender.dkim import DkimSigner
from services.sender.mime import Sender, build_message
from services.sender.render import CompiledContent, recipient_fields


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
    ) -> None:
        self._key = key
        self._return_path_domain = return_path_domain
        self._message_id_domain = message_id_domain
        self._unsubscribe_url = unsubscribe_url
        self._signer = signer

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
    ) -> Prepared:
        """Render, build and sign; raises TemplateProblem or MessageProblem for this recipient."""
        rendered = content.render(recipient_fields(email, name, attributes_json))
        message_id = self.message_id(ref)
        data = build_message(
            sender=sender,
            to_address=email,
            to_name=name,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            unsubscribe_url=self._unsubscribe_url + verp.unsubscribe_token(self._key, ref),
        )
        return Prepared(
            envelope_from=verp.return_path(self._key, ref, self._return_path_domain),
            message_id=message_id,
            data=self._signer.sign(data),
        )
