"""Statuses are types: each domain StrEnum converts to its protobuf enum at one edge per service, whole."""

from mailblast.v1 import auth_pb2, campaigns_pb2, events_pb2, lists_pb2

from services.auth import convert as auth_convert
from services.auth.security import LoginStatus, SessionStatus
from services.bounce import convert as bounce_convert
from services.bounce.kinds import BounceKind, BounceSource
from services.campaigns import convert as campaigns_convert
from services.campaigns.states import CampaignState, RecipientStatus, transition
from services.gateway import statuses


def test_bounce_kinds_and_sources_convert_one_to_one():
    # Every kind and source bounce stores has its own protobuf value, and every value but UNSPECIFIED is
    # one of them: a new kind on either side fails here, not as a KeyError while announcing a bounce.
    kinds = {kind: bounce_convert.kind_to_proto(kind) for kind in BounceKind}
    assert kinds == {
        BounceKind.HARD: events_pb2.BOUNCE_KIND_HARD,
        BounceKind.SOFT: events_pb2.BOUNCE_KIND_SOFT,
        BounceKind.COMPLAINT: events_pb2.BOUNCE_KIND_COMPLAINT,
    }
    assert set(kinds.values()) == set(events_pb2.BounceKind.values()) - {events_pb2.BOUNCE_KIND_UNSPECIFIED}
    sources = {source: bounce_convert.source_to_proto(source) for source in BounceSource}
    assert sources == {BounceSource.SMTP: events_pb2.BOUNCE_SOURCE_SMTP, BounceSource.DSN: events_pb2.BOUNCE_SOURCE_DSN}
    assert set(sources.values()) == set(events_pb2.BounceSource.values()) - {events_pb2.BOUNCE_SOURCE_UNSPECIFIED}
    # The stored text is the enum's value, so rows written before the enum read back as the same kind.
    assert BounceKind("hard") is BounceKind.HARD and BounceSource("dsn") is BounceSource.DSN


def test_campaign_states_convert_one_to_one():
    # Every state campaigns stores is a CampaignState of the contract and the other way round.
    states = {state: campaigns_convert.state_to_proto(state) for state in CampaignState}
    assert sorted(states.values()) == sorted(set(campaigns_pb2.CampaignState.values()) - {0})
    assert states[CampaignState.CANCELLED] == campaigns_pb2.CAMPAIGN_STATE_CANCELLED
    assert CampaignState("paused") is CampaignState.PAUSED


def test_delivery_outcomes_count_as_recipient_statuses():
    # The senders' outcomes land in campaigns' counters: a 5xx refusal is a bounce, an expiry a failure,
    # and each status names its counter of the contract.
    counted = {outcome: campaigns_convert.recipient_status(outcome) for outcome in events_pb2.DeliveryOutcome.values()}
    assert counted == {
        events_pb2.DELIVERY_OUTCOME_UNSPECIFIED: None,
        events_pb2.DELIVERY_OUTCOME_SENT: RecipientStatus.SENT,
        events_pb2.DELIVERY_OUTCOME_DEFERRED: RecipientStatus.DEFERRED,
        events_pb2.DELIVERY_OUTCOME_REJECTED: RecipientStatus.BOUNCED,
        events_pb2.DELIVERY_OUTCOME_EXPIRED: RecipientStatus.FAILED,
        events_pb2.DELIVERY_OUTCOME_SUPPRESSED: RecipientStatus.SUPPRESSED,
    }
    counters = set(campaigns_pb2.CampaignCounters.DESCRIPTOR.fields_by_name)
    assert {str(status) for status in RecipientStatus} <= counters


def test_recipient_transitions():
    # Events come late or twice: a deferred recipient moves on, a final one stays, except that a bounce
    # may follow the receiving server's acceptance.
    assert transition(None, RecipientStatus.DEFERRED)
    assert transition(RecipientStatus.DEFERRED, RecipientStatus.SENT)
    assert transition(RecipientStatus.SENT, RecipientStatus.BOUNCED)
    assert not transition(RecipientStatus.SENT, RecipientStatus.DEFERRED)
    assert not transition(RecipientStatus.BOUNCED, RecipientStatus.SENT)
    assert not transition(RecipientStatus.FAILED, RecipientStatus.BOUNCED)


def test_console_names_of_statuses():
    # The console's pages, filters and translations know states and statuses by these names; a value
    # added to a contract gets its name here without a hand-written map to forget.
    assert statuses.CAMPAIGN_STATES == {
        campaigns_pb2.CAMPAIGN_STATE_DRAFT: "draft",
        campaigns_pb2.CAMPAIGN_STATE_SENDING: "sending",
        campaigns_pb2.CAMPAIGN_STATE_PAUSED: "paused",
        campaigns_pb2.CAMPAIGN_STATE_SENT: "sent",
        campaigns_pb2.CAMPAIGN_STATE_CANCELLED: "cancelled",
        campaigns_pb2.CAMPAIGN_STATE_SCHEDULED: "scheduled",
    }
    assert set(statuses.CAMPAIGN_STATES.values()) == {str(state) for state in CampaignState}
    assert statuses.SUBSCRIBER_STATUSES == {
        lists_pb2.SUBSCRIBER_STATUS_ACTIVE: "active",
        lists_pb2.SUBSCRIBER_STATUS_UNSUBSCRIBED: "unsubscribed",
        lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED: "error_stopped",
        lists_pb2.SUBSCRIBER_STATUS_COMPLAINED: "complained",
        lists_pb2.SUBSCRIBER_STATUS_DELETED: "deleted",
        lists_pb2.SUBSCRIBER_STATUS_PENDING: "pending",
    }


def test_login_and_session_statuses_convert_one_to_one():
    # Auth's outcomes reach the console as the contract's enums: each has its own value, none is left out.
    logins = {status: auth_convert.login_status(status) for status in LoginStatus}
    assert sorted(logins.values()) == sorted(set(auth_pb2.LoginStatus.values()) - {0})
    assert logins[LoginStatus.LOCKED] == auth_pb2.LOGIN_STATUS_LOCKED
    sessions = {status: auth_convert.session_status(status) for status in SessionStatus}
    assert sorted(sessions.values()) == sorted(set(auth_pb2.SessionStatus.values()) - {0})
    assert sessions[SessionStatus.IDLE_TIMEOUT] == auth_pb2.SESSION_STATUS_IDLE_TIMEOUT
