"""The ListsSignupService servicer: signup forms with double opt-in, unsubscribes and the settings of their mails."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta

from mailblast.v1 import lists_pb2, lists_signup_pb2, lists_signup_pb2_grpc

from services.common.audit import AuditTrail
from services.common.clock import Clock
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.identity import require_scope, require_service
from services.common.log import get_logger
from services.common.verp import parse_unsubscribe_token
from services.lists import convert, fields, signup, validation
from services.lists.grpc_convert import ResourceExhausted, custom_field, one_line, ts
from services.lists.signup import ConfirmationLimits, Letter
from services.lists.store import ListsStore
from services.lists.store_fields import FieldStore
from services.lists.store_signup import FormRow, Settings, SignupStore
from services.lists.store_suppression import SuppressionStore
from services.lists.suppression import signup_mailed

log = get_logger(__name__)

# Publishes one transactional mail (services.common.mail.send bound to the service's JetStream context).
SendMail = Callable[..., Awaitable[None]]


def _form(row: FormRow) -> lists_signup_pb2.SignupForm:
    return lists_signup_pb2.SignupForm(
        id=row.id,
        list_id=row.list_id,
        name=row.name,
        field_keys=list(row.field_keys),
        ask_name=row.ask_name,
        redirect_url=row.redirect_url,
        thanks_text=row.thanks_text,
        created_at=ts(row.created_at),
    )


def _settings(saved: Settings) -> lists_signup_pb2.ListsSettings:
    return lists_signup_pb2.ListsSettings(**asdict(saved))


class SignupServicer(lists_signup_pb2_grpc.ListsSignupServiceServicer):
    """Consent in and out: forms, double opt-in, unsubscribe links and the mails they send."""

    def __init__(
        self, store: SignupStore, lists: ListsStore, fields_: FieldStore, suppressions: SuppressionStore,
        send_mail: SendMail | None, audit: AuditTrail, clock: Clock, *, internal_key: bytes, public_url: str,
        signup_rate_per_hour: int, confirm_window_seconds: float, confirm_daily_cap: int,
    ) -> None:  # fmt: skip
        self._store = store
        self._lists = lists
        self._fields = fields_
        self._suppressions = suppressions
        self._send_mail = send_mail
        self._audit = audit
        # The time confirmation limits are counted in; tests move it.
        self._clock = clock
        self._key = internal_key
        self._public_url = public_url.rstrip("/")
        self._rate = signup_rate_per_hour
        self._window = timedelta(seconds=confirm_window_seconds)
        self._daily_cap = confirm_daily_cap

    async def _mail(
        self, org: int, key: str, to: str, name: str, settings: Settings, letter: Letter, category: str,
        variables: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        assert self._send_mail is not None
        await self._send_mail(
            organization_id=org, key=key, to_address=to, to_name=name, from_address=settings.sender_address,
            from_name=settings.sender_name, subject=letter.subject, text_body=letter.text_body,
            html_body=letter.html_body, category=category, variables=variables,
        )  # fmt: skip

    # Unsubscribe

    def _token_ref(self, token: str):
        ref = parse_unsubscribe_token(self._key, token)
        if ref is None:
            raise NotFound("this unsubscribe link is not valid")
        return ref

    async def Unsubscribe(self, request, context):
        """Unsubscribe the token's subscriber, committed before this returns."""
        require_service()
        ref = self._token_ref(request.token)
        source = request.source or "page"
        if source not in signup.UNSUBSCRIBE_SOURCES:
            raise InvalidArgument('source must be "one-click" or "page"')
        left, status, email, name = await self._store.unsubscribe(
            ref.organization_id, ref.subscriber_id, list(request.list_ids), f"{source} campaign {ref.campaign_id}"
        )
        settings = await self._store.settings(ref.organization_id)
        if settings.confirm_unsubscribe and self._send_mail is not None:
            key = signup.unsubscribed_key(ref.organization_id, ref.subscriber_id, ref.campaign_id)
            await self._mail(ref.organization_id, key, email, name, settings, signup.UNSUBSCRIBED, "lists.unsubscribed")
        log.info("unsubscribed", organization_id=ref.organization_id, subscriber_id=ref.subscriber_id, source=source)
        return lists_signup_pb2.UnsubscribeResponse(left_list_ids=left, status=convert.status_pb(status))

    async def GetUnsubscribePage(self, request, context):
        """The token's subscriber and lists, for the page that lets them choose."""
        require_service()
        ref = self._token_ref(request.token)
        email, status, lists = await self._store.subscriber_lists(ref.organization_id, ref.subscriber_id)
        return lists_signup_pb2.UnsubscribePage(
            email=email,
            status=convert.status_pb(status),
            lists=[lists_pb2.MailingList(id=i, name=n, description=d) for i, n, d in lists],
        )

    # Settings

    async def GetSettings(self, request, context):
        """The organisation's lists settings."""
        principal = require_scope("read")
        return _settings(await self._store.settings(principal.organization_id))

    async def UpdateSettings(self, request, context):
        """Change the organisation's lists settings."""
        principal = require_scope("admin")
        address = request.sender_address.strip()
        if address:
            try:
                address = validation.check_sender_address(address)
            except ValueError as exc:
                raise InvalidArgument.of(exc) from None
        elif await self._store.forms(principal.organization_id):
            raise FailedPrecondition(
                "the signup forms send their confirmation mail from the sender address: it cannot be empty "
                "while the organisation has forms"
            )
        elif request.confirm_unsubscribe:
            raise InvalidArgument("the unsubscribe confirmation mail needs a sender address: set one too")
        saved = await self._store.update_settings(
            principal.organization_id, request.confirm_unsubscribe, address,
            one_line(request.sender_name, "sender_name", 200),
        )  # fmt: skip
        await self._audit.record(
            "lists.settings_changed", f"organization:{principal.organization_id}", asdict(saved), context=context
        )
        return _settings(saved)

    # Forms

    async def CreateForm(self, request, context):
        """Save a signup form for a list."""
        principal = require_scope("send")
        org = principal.organization_id
        await self._lists.own_list(org, request.list_id)
        if not (await self._store.settings(org)).sender_address:
            # A form is live once saved: without a From its confirmation mail could never be sent.
            raise FailedPrecondition(
                "a signup form needs a sender address for its confirmation mail: set one in the list settings first"
            )
        defs = await self._fields.defs(org)
        unknown = [k for k in request.field_keys if k not in defs]
        if unknown:
            raise InvalidArgument("no custom field %(field)r in your organisation", field=unknown[0])
        redirect = request.redirect_url.strip()
        if redirect and not redirect.startswith(("https://", "http://")):
            raise InvalidArgument("redirect_url must be an http(s) URL")
        name = one_line(request.name.strip() or "signup", "the form name", 200)
        created = await self._store.create_form(
            org, request.list_id, name, list(request.field_keys), request.ask_name, one_line(redirect, "redirect_url"),
            request.thanks_text[:2000],
        )  # fmt: skip
        detail = {"list_id": request.list_id, "name": name, "field_keys": list(request.field_keys)}
        await self._audit.record("form.created", f"form:{created.id}", detail, context=context)
        return _form(created)

    async def ListForms(self, request, context):
        """The organisation's forms."""
        principal = require_scope("read")
        return lists_signup_pb2.ListFormsResponse(
            forms=[_form(f) for f in await self._store.forms(principal.organization_id)]
        )

    async def GetFormSnippet(self, request, context):
        """Embeddable HTML for a form."""
        principal = require_scope("read")
        found = await self._store.forms(principal.organization_id, request.form_id)
        if not found:
            raise NotFound("no form %(form)s in your organisation", form=request.form_id)
        form = found[0]
        defs = await self._fields.defs(principal.organization_id)
        html = signup.form_snippet(f"{self._public_url}/f/{form.id}", form.ask_name, form.field_keys, defs)
        return lists_signup_pb2.FormSnippet(html=html)

    async def GetPublicForm(self, request, context):
        """A form's name and fields for its hosted page; the form id names the organisation."""
        require_service()
        form = await self._public_form(request.form_id)
        defs = await self._fields.defs(form.organization_id)
        return lists_signup_pb2.PublicForm(
            id=form.id,
            name=form.name,
            ask_name=form.ask_name,
            fields=[custom_field(defs[k]) for k in form.field_keys if k in defs],
        )

    async def _public_form(self, form_id: int) -> FormRow:
        found = await self._store.forms(None, form_id)
        if not found:
            raise NotFound("no form %(form)s", form=form_id)
        return found[0]

    async def SubmitSignup(self, request, context):
        """A signup from a public form: pending subscriber, consent, confirmation mail."""
        require_service()
        form = await self._public_form(request.form_id)
        reply = lists_signup_pb2.SubmitSignupResponse(
            accepted=True, thanks_text=form.thanks_text, redirect_url=form.redirect_url
        )
        if request.honeypot:
            log.info("signup honeypot filled; ignored", form_id=form.id)
            return reply
        if not await self._store.signup_allowed(request.source_ip or "unknown", self._rate):
            raise ResourceExhausted("too many signups from this address; try again in an hour")
        org = form.organization_id
        settings = await self._store.settings(org)
        if not settings.sender_address:
            # A form saved before forms needed a sender: refuse rather than thank for a mail never sent.
            log.warning("signup refused: no sender address for the confirmation mail", organization_id=org)
            raise FailedPrecondition("this form cannot take signups at the moment; please try again later")
        try:
            email = validation.check_email(request.email.strip())
            name = validation.check_name(request.name.strip()) if form.ask_name else ""
            asked = {k: v for k, v in request.fields.items() if k in form.field_keys}
            defs = await self._fields.defs(org)
            attributes = fields.check_values(defs, validation.check_attributes(json.dumps(asked)))
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        hit = await self._suppressions.hit(org, email)
        if not signup_mailed(hit.reason if hit else None):
            # The same answer as any signup: a stranger learns nothing about the address.
            log.info("signup of a suppressed address; no mail", organization_id=org, form_id=form.id)
            return reply
        token = secrets.token_urlsafe(24)
        link = f"{self._public_url}/c/{token}"

        async def send(subscriber_id: int) -> None:
            key = signup.confirmation_key(form.id, subscriber_id, token)
            await self._mail(
                org, key, email, name, settings, signup.CONFIRMATION, "lists.confirm", {"confirm_url": link}
            )

        limits = ConfirmationLimits(self._clock.now(), self._window, self._daily_cap)
        subscriber_id = await self._store.submit_signup(
            org, form.id, email, name, attributes, signup.hash_token(token), request.source_ip[:100],
            request.user_agent, limits, send,
        )  # fmt: skip
        if subscriber_id is None:
            # The same answer as a signup that mailed: a stranger learns nothing about the address.
            log.info("confirmation mail held back by its limits", organization_id=org, form_id=form.id)
            return reply
        log.info("signup awaiting confirmation", organization_id=org, form_id=form.id, subscriber_id=subscriber_id)
        return reply

    async def ConfirmSignup(self, request, context):
        """The confirmation click: the subscriber becomes active on the form's list."""
        require_service()
        row = await self._store.confirm_signup(signup.hash_token(request.token.strip()))
        return lists_signup_pb2.ConfirmSignupResponse(
            list_id=row.list_id, thanks_text=row.thanks_text, redirect_url=row.redirect_url
        )
