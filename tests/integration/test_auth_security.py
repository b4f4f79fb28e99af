"""Account security of the auth service on real PostgreSQL, NATS and gRPC: logins, sessions, passwords, TOTP, audit."""

from __future__ import annotations

import dataclasses
import json
import time

import grpc
import nats.errors
import psycopg
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet
from mailblast.v1 import auth_pb2, auth_pb2_grpc, events_pb2

from services.auth import totp
from services.auth.config import Config
from services.auth.service import start
from services.common import bus
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from tests.support.clock import MovableClock
from tests.support.mtls import default_pki
from tests.support.nats import NatsServer

S = auth_pb2
PASSWORD = "violet-otter-47-lantern"


class Mailbox:
    """A durable consumer on the send stream: the transactional messages auth published."""

    def __init__(self, sub) -> None:
        self._sub = sub

    async def next(self, category: str, timeout: float = 10.0) -> events_pb2.TransactionalMessage:
        """The next message of this category, waiting for it at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msgs = await self._sub.fetch(1, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                await msg.ack()
                message = events_pb2.TransactionalMessage()
                message.ParseFromString(msg.data)
                if message.category == category:
                    return message
        raise AssertionError(f"no {category} message published")


@dataclasses.dataclass
class Env:
    """A running auth service, its stub, a mailbox, and the installation's first organisation."""

    stub: auth_pb2_grpc.AuthServiceStub
    mail: Mailbox
    signer: IdentitySigner
    boot: auth_pb2.BootstrapResponse
    database_url: str
    clock: MovableClock
    # auth's gRPC port, for a channel with another certificate than the console's
    port: int = 0

    @property
    def gateway(self) -> list[tuple[str, str]]:
        """Metadata of the console gateway calling as a service."""
        return [(IDENTITY_HEADER, self.signer.sign(Principal(organization_id=0, service="gateway"), "auth"))]

    def as_user(self, organization_id: int, user_id: int, role: str) -> list[tuple[str, str]]:
        """Metadata of the gateway relaying a logged-in user's principal."""
        scopes = {"viewer": ("read",), "editor": ("read", "send")}.get(role, ("read", "send", "admin"))
        principal = Principal(organization_id, user_id, scopes, role, service="gateway")
        return [(IDENTITY_HEADER, self.signer.sign(principal, "auth")), ("x-mailblast-source-ip", "198.51.100.9")]

    @property
    def owner(self) -> list[tuple[str, str]]:
        """The bootstrap owner, relayed by the gateway."""
        return self.as_user(self.boot.organization.id, self.boot.user.id, "owner")

    async def login(self, login: str, password: str, ip: str = "203.0.113.5", **more) -> auth_pb2.LoginResponse:
        """Log in through the gateway."""
        request = S.LoginRequest(login=login, password=password, source_ip=ip, user_agent="pytest", **more)
        return await self.stub.Login(request, metadata=self.gateway)

    async def add_user(self, login: str, role: str, password: str = PASSWORD, admin=None) -> auth_pb2.User:
        """Create a user with an invitation, and set the password through the mailed link."""
        user = await self.stub.CreateUser(
            S.CreateUserRequest(login=login, email=f"{login}@example.org", role=role, send_invite=True),
            metadata=admin or self.owner,
        )
        invite = await self.mail.next("auth.invite")
        token = json.loads(invite.variables_json)["url"].rsplit("/", 1)[1]
        await self.stub.ResetPassword(S.ResetPasswordRequest(token=token, new_password=password), metadata=self.gateway)
        return user

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run SQL against the auth schema (to age sessions and links without waiting)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def config(database_url: str, nats: NatsServer, internal_key: bytes, **overrides) -> Config:
    """Auth settings for a test."""
    keys = (Fernet.generate_key(),)
    base = Config(
        database_url=database_url, internal_key=internal_key, nats_url=nats.url, totp_keys=keys,
        grpc_tls=default_pki().tls("auth"), grpc_bind="127.0.0.1:0",
        console_url="https://console.test", nats_creds_file=nats.creds("auth"),
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


@pytest_asyncio.fixture
async def make_env(database_url: str, nats_server: NatsServer, internal_key: bytes, signer: IdentitySigner):
    """Start auth with the given settings, bootstrap organisation 'Acme' with owner 'alice', and a mailbox."""
    started = []

    async def make(**overrides) -> Env:
        clock = MovableClock()
        running = await start(config(database_url, nats_server, internal_key, **overrides), clock=clock)
        channel = default_pki().channel(running.grpc_port, "gateway")
        nc = await nats_server.connect()
        sub = await nc.jetstream().pull_subscribe(
            bus.SUBJECT_SEND_TRANSACTIONAL, durable="test-mail", stream=bus.STREAM_SEND
        )
        started.append((running, channel, nc))
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        async with default_pki().channel(running.grpc_port, "dev-run") as boot_channel:
            boot = await auth_pb2_grpc.AuthServiceStub(boot_channel).Bootstrap(
                S.BootstrapRequest(
                    organization_name="Acme", admin_login="alice", admin_email="alice@example.org",
                    admin_password=PASSWORD,
                ),
                metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="dev-run"), "auth"))],
            )  # fmt: skip
        return Env(stub, Mailbox(sub), signer, boot, database_url, clock, running.grpc_port)

    yield make
    for running, channel, nc in started:
        await nc.close()
        await channel.close()
        await running.stop()


async def refused(call, code: grpc.StatusCode) -> str:
    """Await a call that must fail with this status; return its details."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value.details()


async def test_lockout_mail_unlock_and_expiry(make_env):
    # Five wrong passwords in a row lock bob's login for browsers that never logged in to it: the fifth
    # publishes an "auth.lockout" mail to him saying so. While locked, the right password and a wrong one
    # get the very same LOCKED answer (the password is not even checked), and each try counts: one made
    # just before the lock would have ended keeps it. An admin's Unlock lets him in at once; a second
    # lock simply expires 30 minutes after the last try (the clock is moved, not waited for).
    env = await make_env()
    bob = await env.add_user("bob", "editor")
    for _ in range(5):
        assert (await env.login("bob", "wrong-password-x")).status == S.LOGIN_STATUS_FAILED
    notice = await env.mail.next("auth.lockout")
    assert notice.to_address == "bob@example.org" and notice.content.from_address == "no-reply@mailblast.example.com"
    assert json.loads(notice.variables_json)["login"] == "bob"
    assert "Browsers you have logged in with before can still log in." in notice.content.text_body
    right, wrong = await env.login("bob", PASSWORD), await env.login("bob", "wrong-password-x")
    assert right == wrong == S.LoginResponse(status=S.LOGIN_STATUS_LOCKED, idle_timeout_seconds=1800)
    [listed] = [u for u in (await env.stub.ListUsers(S.ListUsersRequest(), metadata=env.owner)).users if u.id == bob.id]
    assert listed.HasField("locked_until")
    env.clock.advance(1800 - 60)
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_LOCKED
    env.clock.advance(120)
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_LOCKED

    unlocked = await env.stub.Unlock(S.UnlockRequest(user_id=bob.id), metadata=env.owner)
    assert not unlocked.HasField("locked_until")
    ok = await env.login("bob", PASSWORD)
    assert ok.status == S.LOGIN_STATUS_OK and len(ok.session_token) >= 43

    for _ in range(5):
        await env.login("bob", "wrong-password-x")
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_LOCKED
    env.clock.advance(1799)
    assert (await env.login("bob", "wrong-password-x")).status == S.LOGIN_STATUS_LOCKED
    env.clock.advance(1801)
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_OK
    actions = [
        e.action for e in (await env.stub.ListAuditEvents(S.ListAuditEventsRequest(), metadata=env.owner)).events
    ]
    assert actions.count("login.locked") == 2 and "user.unlocked" in actions
    reasons = [
        json.loads(e.detail_json)["reason"]
        for e in (
            await env.stub.ListAuditEvents(S.ListAuditEventsRequest(action="login.failed"), metadata=env.owner)
        ).events
    ]
    assert reasons.count("locked") == 6 and reasons.count("wrong_password") == 10


async def test_failures_spread_out_do_not_add_up(make_env):
    # Four wrong passwords, then one more over 30 minutes later: the count started again, so bob is not
    # locked; four more right after that then lock him.
    env = await make_env()
    await env.add_user("bob", "editor")
    for _ in range(4):
        await env.login("bob", "wrong-password-x")
    env.clock.advance(1801)
    assert (await env.login("bob", "wrong-password-x")).status == S.LOGIN_STATUS_FAILED
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_OK
    for _ in range(5):
        assert (await env.login("bob", "wrong-password-x")).status == S.LOGIN_STATUS_FAILED
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_LOCKED


async def test_made_up_logins_lock_like_real_ones(make_env):
    # A guesser cannot tell which logins exist from the lock: five failures of a login nobody has lock it
    # just like a real one, and the locked answers are identical.
    env = await make_env()
    for login in ("alice", "nobody-here"):
        for _ in range(5):
            assert (await env.login(login, "wrong-password-x")).status == S.LOGIN_STATUS_FAILED
    real, made_up = await env.login("alice", PASSWORD), await env.login("nobody-here", PASSWORD)
    assert real == made_up == S.LoginResponse(status=S.LOGIN_STATUS_LOCKED, idle_timeout_seconds=1800)


async def test_a_browser_that_logged_in_before_is_not_locked_out_by_strangers(make_env):
    # The attack: strangers lock the well-known owner "alice" with five wrong passwords, and twenty
    # failures for made-up logins from her office's address throttle it. Alice's browsers, which logged
    # in before and carry auth's device cookie, still get in with the right password, from that same
    # address, while any browser without one (even with the right password) is locked or throttled. A
    # cookie for another login, or a forged one, counts as none. A device's own wrong passwords lock
    # only that device (and throttle no address): her other browser still logs in. Each lock is mailed,
    # saying which browsers.
    env = await make_env(ip_failures_per_minute=5)
    office, elsewhere = "198.51.100.20", "203.0.113.99"
    laptop = (await env.login("alice", PASSWORD, ip=office)).device_cookie
    phone = (await env.login("alice", PASSWORD, ip=elsewhere)).device_cookie
    assert laptop and phone and laptop != phone and "alice" not in laptop
    await env.add_user("bob", "editor")
    bobs = (await env.login("bob", PASSWORD)).device_cookie

    for _ in range(5):
        await env.login("alice", "guess-1234", ip=elsewhere)
    assert "not logged in to it before" in (await env.mail.next("auth.lockout")).content.text_body
    for n in range(20):
        await env.login(f"made-up-{n}", "guess-1234", ip=office)
    assert (await env.login("alice", PASSWORD, ip=office)).status == S.LOGIN_STATUS_THROTTLED
    assert (await env.login("alice", PASSWORD, ip="192.0.2.1")).status == S.LOGIN_STATUS_LOCKED
    for stranger in (bobs, laptop[:-4] + "AAAA", laptop.replace("d1.", "d2.", 1), "nonsense"):
        got = await env.login("alice", PASSWORD, ip="192.0.2.1", device_cookie=stranger)
        assert got.status == S.LOGIN_STATUS_LOCKED, stranger

    back = await env.login("alice", PASSWORD, ip=office, device_cookie=laptop)
    assert back.status == S.LOGIN_STATUS_OK and back.session_token
    assert back.device_cookie and back.device_cookie != laptop
    laptop = back.device_cookie

    env.clock.advance(61)
    for _ in range(5):
        got = await env.login("alice", "my-own-typo-1", ip=office, device_cookie=laptop)
        assert got.status == S.LOGIN_STATUS_FAILED
    assert "Other browsers are not affected." in (await env.mail.next("auth.lockout")).content.text_body
    assert (await env.login("alice", PASSWORD, ip=office, device_cookie=laptop)).status == S.LOGIN_STATUS_LOCKED
    assert (await env.login("alice", PASSWORD, ip=office, device_cookie=phone)).status == S.LOGIN_STATUS_OK
    assert (await env.login("bob", PASSWORD, ip=office)).status == S.LOGIN_STATUS_OK


async def test_no_user_enumeration(make_env):
    # An unknown login and a known login with a wrong password get the same FAILED answer with nothing
    # else in it, and both cost an argon2 verification: their median durations are within a factor of 3
    # (a path skipping argon2 would be tens of times faster).
    env = await make_env(ip_failures_per_minute=1000, lockout_threshold=1000)

    async def timed(login: str) -> tuple[float, auth_pb2.LoginResponse]:
        started = time.perf_counter()
        reply = await env.login(login, "not-the-password-1")
        return time.perf_counter() - started, reply

    unknown, known = [], []
    for _ in range(5):
        for login, into in (("nobody-here", unknown), ("alice", known)):
            elapsed, reply = await timed(login)
            assert reply == S.LoginResponse(status=S.LOGIN_STATUS_FAILED, idle_timeout_seconds=1800)
            into.append(elapsed)
    median_unknown, median_known = sorted(unknown)[2], sorted(known)[2]
    assert median_unknown / 3 < median_known < median_unknown * 3, (unknown, known)


async def test_ip_throttle(make_env):
    # After AUTH_IP_FAILURES_PER_MINUTE failures from one address, that address gets THROTTLED even with
    # the right password; another address still logs in; a minute later (the clock moved) so does it.
    env = await make_env(ip_failures_per_minute=3)
    for login in ("x1", "x2", "alice"):
        assert (await env.login(login, "wrong-password-x", ip="192.0.2.66")).status == S.LOGIN_STATUS_FAILED
    assert (await env.login("alice", PASSWORD, ip="192.0.2.66")).status == S.LOGIN_STATUS_THROTTLED
    assert (await env.login("alice", PASSWORD, ip="192.0.2.67")).status == S.LOGIN_STATUS_OK
    env.clock.advance(30)
    assert (await env.login("alice", PASSWORD, ip="192.0.2.66")).status == S.LOGIN_STATUS_THROTTLED
    env.clock.advance(31)
    assert (await env.login("alice", PASSWORD, ip="192.0.2.66")).status == S.LOGIN_STATUS_OK


async def test_idle_and_absolute_timeouts(make_env):
    # A session unused for AUTH_IDLE_TIMEOUT_SECONDS is refused as IDLE_TIMEOUT; one kept busy still ends
    # AUTH_ABSOLUTE_TIMEOUT_SECONDS after login as ABSOLUTE_TIMEOUT. A valid one carries the principal.
    # The service's clock moves; every use of a busy session restarts its idle timer.
    env = await make_env(idle_timeout_seconds=600, absolute_timeout_seconds=1800)

    async def status(token: str) -> auth_pb2.GetSessionResponse:
        return await env.stub.GetSession(S.GetSessionRequest(session_token=token), metadata=env.gateway)

    first = await env.login("alice", PASSWORD)
    valid = await status(first.session_token)
    assert valid.status == S.SESSION_STATUS_VALID
    assert (valid.principal.user_id, valid.principal.role) == (env.boot.user.id, "owner")
    assert sorted(valid.principal.scopes) == ["admin", "read", "send"]
    env.clock.advance(590)
    assert (await status(first.session_token)).status == S.SESSION_STATUS_VALID
    env.clock.advance(601)
    idle = await status(first.session_token)
    assert idle.status == S.SESSION_STATUS_IDLE_TIMEOUT and not idle.HasField("principal")

    busy = await env.login("alice", PASSWORD)
    for _ in range(3):
        env.clock.advance(590)
        assert (await status(busy.session_token)).status == S.SESSION_STATUS_VALID
    env.clock.advance(60)
    assert (await status(busy.session_token)).status == S.SESSION_STATUS_ABSOLUTE_TIMEOUT
    unknown = await status("nope")
    assert unknown.status == S.SESSION_STATUS_UNKNOWN


async def test_password_rules_and_change_revokes_other_sessions(make_env):
    # Changing the password needs the current one and follows the rules (8..128 characters, 64 allowed,
    # not the login or email, and hard to guess by zxcvbn's score with the user's login, email, the
    # organisation "Acme" and the product's name as known words, the refusal saying why); afterwards the
    # user's other sessions are REVOKED while the one used stays valid, and the old password no longer
    # logs in. Logout revokes.
    env = await make_env()
    here, there = await env.login("alice", PASSWORD), await env.login("alice", PASSWORD)
    change = S.ChangePasswordRequest(session_token=here.session_token, current_password=PASSWORD)
    for new, words in [
        ("short7!", "shorter than 8"),
        ("x" * 129, "longer than 128"),
        ("iloveyou", "This is a top-100 common password."),
        ("password", "This is a top-10 common password."),
        ("Baseball1", "common"),
        ("aaaaaaaa", 'Repeats like "aaa" are easy to guess.'),
        ("abcdefgh", 'Sequences like "abc" or "6543" are easy to guess.'),
        ("mailblast", "It is built on your login, email address or organisation, or on the product's name."),
        ("AcmeAlice1", "It is built on your login"),
        ("alice@example.org", "login or email"),
    ]:
        change.new_password = new
        assert words in await refused(
            env.stub.ChangePassword(change, metadata=env.gateway), grpc.StatusCode.INVALID_ARGUMENT
        )
    change.new_password = "aaaaaaaa"
    assert await refused(env.stub.ChangePassword(change, metadata=env.gateway), grpc.StatusCode.INVALID_ARGUMENT) == (
        'password is too easy to guess (strength 0 of 4, 3 needed): Repeats like "aaa" are easy to guess. '
        "Add another word or two. Uncommon words are better. Avoid repeated words and characters."
    )
    change.current_password, change.new_password = "wrong-current-1", "another-good-pass-1"
    await refused(env.stub.ChangePassword(change, metadata=env.gateway), grpc.StatusCode.PERMISSION_DENIED)
    long_password = (
        "しずかなもりのおくでふくろうがないているよるにはつきがでると"
        + "こどもたちがいうのでまどをあけてそらをみたらほしがみっつならんでいた"
    )
    assert len(long_password) == 64
    change.current_password, change.new_password = PASSWORD, long_password
    reply = await env.stub.ChangePassword(change, metadata=env.gateway)
    assert reply.revoked_sessions == 1

    async def status(login: auth_pb2.LoginResponse) -> auth_pb2.GetSessionResponse:
        request = S.GetSessionRequest(session_token=login.session_token)
        return await env.stub.GetSession(request, metadata=env.gateway)

    assert (await status(there)).status == S.SESSION_STATUS_REVOKED
    assert (await status(here)).status == S.SESSION_STATUS_VALID
    assert (await env.login("alice", PASSWORD)).status == S.LOGIN_STATUS_FAILED
    assert (await env.login("alice", long_password)).status == S.LOGIN_STATUS_OK
    await env.stub.Logout(S.LogoutRequest(session_token=here.session_token), metadata=env.gateway)
    assert (await status(here)).status == S.SESSION_STATUS_REVOKED
    stored = env.sql("SELECT password_hash FROM auth.users WHERE login = 'alice'")[0][0]
    assert stored.startswith("$argon2id$")


async def test_wrong_passwords_within_a_session_lock_that_session_s_password_checks(make_env):
    # Someone holding alice's session (not her password) guesses it through "change password": after
    # five wrong current passwords that session gets FAILED_PRECONDITION even for the right one, so the
    # answers tell nothing; her other session is not affected, and the lock ends 30 minutes after the
    # last try (the clock moved). Turning off TOTP checks the password the same way. (Sessions go by the
    # same clock: they stay unused longer than the lock lasts.)
    env = await make_env(idle_timeout_seconds=7200)
    stolen, hers = (
        (await env.login("alice", PASSWORD)).session_token,
        (await env.login("alice", PASSWORD)).session_token,
    )
    change = S.ChangePasswordRequest(
        session_token=stolen, current_password="guess-0000", new_password="calm-river-81-stone"
    )
    for _ in range(5):
        await refused(env.stub.ChangePassword(change, metadata=env.gateway), grpc.StatusCode.PERMISSION_DENIED)
    for current in (PASSWORD, "guess-0000"):
        change.current_password = current
        assert "too many wrong passwords in this session" in await refused(
            env.stub.ChangePassword(change, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION
        )
    disable = S.DisableTotpRequest(session_token=stolen, password=PASSWORD)
    await refused(env.stub.DisableTotp(disable, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION)
    mine = S.ChangePasswordRequest(session_token=hers, current_password="typo-1111", new_password="calm-river-81-stone")
    await refused(env.stub.ChangePassword(mine, metadata=env.gateway), grpc.StatusCode.PERMISSION_DENIED)
    env.clock.advance(1801)
    change.current_password = PASSWORD
    assert (await env.stub.ChangePassword(change, metadata=env.gateway)).revoked_sessions == 1


async def test_reset_link_single_use_and_expiry(make_env):
    # An admin's reset mails bob a link to AUTH_CONSOLE_URL/reset/<token>; only its hash is stored. Using
    # it sets the password, clears a lockout and revokes all his sessions; the same link is then refused,
    # as is a link past its AUTH_RESET_TTL_SECONDS and an earlier link replaced by a newer one.
    env = await make_env()
    bob = await env.add_user("bob", "viewer")
    session = await env.login("bob", PASSWORD)
    for _ in range(5):
        await env.login("bob", "wrong-password-x")
    reply = await env.stub.RequestPasswordReset(S.RequestPasswordResetRequest(user_id=bob.id), metadata=env.owner)
    assert reply.HasField("expires_at")
    mail = await env.mail.next("auth.password_reset")
    url = json.loads(mail.variables_json)["url"]
    assert url.startswith("https://console.test/reset/") and mail.to_address == "bob@example.org"
    token = url.rsplit("/", 1)[1]
    assert env.sql("SELECT count(*) FROM auth.user_tokens WHERE token_hash = sha256(%s::bytea)", (token.encode(),))
    assert token not in str(env.sql("SELECT * FROM auth.user_tokens"))

    reset = S.ResetPasswordRequest(token=token, new_password="password")
    await refused(env.stub.ResetPassword(reset, metadata=env.gateway), grpc.StatusCode.INVALID_ARGUMENT)
    reset.new_password = "a-brand-new-secret-9"
    assert (await env.stub.ResetPassword(reset, metadata=env.gateway)).user.id == bob.id
    got = await env.stub.GetSession(S.GetSessionRequest(session_token=session.session_token), metadata=env.gateway)
    assert got.status == S.SESSION_STATUS_REVOKED
    assert (await env.login("bob", "a-brand-new-secret-9")).status == S.LOGIN_STATUS_OK
    assert "expired or was already used" in await refused(
        env.stub.ResetPassword(reset, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION
    )

    await env.stub.RequestPasswordReset(S.RequestPasswordResetRequest(user_id=bob.id), metadata=env.owner)
    older = json.loads((await env.mail.next("auth.password_reset")).variables_json)["url"].rsplit("/", 1)[1]
    await env.stub.RequestPasswordReset(S.RequestPasswordResetRequest(user_id=bob.id), metadata=env.owner)
    newer = json.loads((await env.mail.next("auth.password_reset")).variables_json)["url"].rsplit("/", 1)[1]
    replaced = S.ResetPasswordRequest(token=older, new_password="yet-another-secret-1")
    await refused(env.stub.ResetPassword(replaced, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION)
    env.sql("UPDATE auth.user_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    expired = S.ResetPasswordRequest(token=newer, new_password="yet-another-secret-1")
    await refused(env.stub.ResetPassword(expired, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION)


async def test_totp_login_replay_and_recovery_codes(make_env):
    # Alice turns on TOTP: setup gives an otpauth URI with issuer mailblast, confirming with a code
    # returns 10 recovery codes. Logging in then asks for a code (TOTP_REQUIRED with a challenge); the
    # challenge plus the current code logs in; the same code again is a replay and FAILS; a recovery
    # code works once; disabling TOTP needs the password.
    env = await make_env()
    first = await env.login("alice", PASSWORD)
    setup = await env.stub.BeginTotpSetup(
        S.BeginTotpSetupRequest(session_token=first.session_token), metadata=env.gateway
    )
    assert (
        setup.provisioning_uri.startswith("otpauth://totp/mailblast:alice?")
        and "issuer=mailblast" in setup.provisioning_uri
    )
    confirm = S.ConfirmTotpRequest(session_token=first.session_token, code="000000")
    await refused(env.stub.ConfirmTotp(confirm, metadata=env.gateway), grpc.StatusCode.INVALID_ARGUMENT)
    confirm.code = totp.code_at(setup.secret, time.time())
    codes = list((await env.stub.ConfirmTotp(confirm, metadata=env.gateway)).recovery_codes)
    assert len(set(codes)) == 10

    asked = await env.login("alice", PASSWORD)
    assert asked.status == S.LOGIN_STATUS_TOTP_REQUIRED and not asked.session_token and asked.challenge_token
    # The confirm used the current step: a login within the same step with that code is a replay.
    replay = await env.stub.Login(
        S.LoginRequest(challenge_token=asked.challenge_token, totp_code=confirm.code), metadata=env.gateway
    )
    assert replay.status == S.LOGIN_STATUS_FAILED
    next_code = totp.code_at(setup.secret, time.time() + totp.STEP_SECONDS)
    ok = await env.stub.Login(
        S.LoginRequest(challenge_token=asked.challenge_token, totp_code=next_code), metadata=env.gateway
    )
    assert ok.status == S.LOGIN_STATUS_OK and ok.session_token
    again = await env.login("alice", PASSWORD, totp_code=next_code)
    assert again.status == S.LOGIN_STATUS_FAILED

    assert (await env.login("alice", PASSWORD, recovery_code=codes[0].upper())).status == S.LOGIN_STATUS_OK
    assert (await env.login("alice", PASSWORD, recovery_code=codes[0])).status == S.LOGIN_STATUS_FAILED
    assert (await env.login("alice", PASSWORD, recovery_code=codes[1])).status == S.LOGIN_STATUS_OK
    assert len(env.sql("SELECT 1 FROM auth.recovery_codes WHERE used_at IS NULL")) == 8

    disable = S.DisableTotpRequest(session_token=ok.session_token, password="wrong-password-x")
    await refused(env.stub.DisableTotp(disable, metadata=env.gateway), grpc.StatusCode.PERMISSION_DENIED)
    disable.password = PASSWORD
    assert not (await env.stub.DisableTotp(disable, metadata=env.gateway)).totp_enabled
    assert (await env.login("alice", PASSWORD)).status == S.LOGIN_STATUS_OK


async def test_require_totp_gives_setup_only_session(make_env):
    # With require_totp set, bob (no TOTP) logs in to TOTP_SETUP_REQUIRED: his session has no scopes,
    # only TOTP set-up accepts it; confirming swaps it for a full session and he can no longer turn
    # TOTP off. Only admins may read or change the setting.
    env = await make_env()
    bob = await env.add_user("bob", "editor")
    bob_md = env.as_user(env.boot.organization.id, bob.id, "editor")
    await refused(
        env.stub.GetOrganization(S.GetOrganizationRequest(), metadata=bob_md), grpc.StatusCode.PERMISSION_DENIED
    )
    settings = S.SetOrganizationSettingsRequest(settings=S.OrganizationSettings(require_totp=True))
    await refused(env.stub.SetOrganizationSettings(settings, metadata=bob_md), grpc.StatusCode.PERMISSION_DENIED)
    assert (await env.stub.SetOrganizationSettings(settings, metadata=env.owner)).settings.require_totp
    assert (await env.stub.GetOrganization(S.GetOrganizationRequest(), metadata=env.owner)).settings.require_totp

    limited = await env.login("bob", PASSWORD)
    assert limited.status == S.LOGIN_STATUS_TOTP_SETUP_REQUIRED and limited.session_token
    got = await env.stub.GetSession(S.GetSessionRequest(session_token=limited.session_token), metadata=env.gateway)
    assert got.status == S.SESSION_STATUS_TOTP_SETUP_REQUIRED and list(got.principal.scopes) == []
    await refused(
        env.stub.ListSessions(S.ListSessionsRequest(session_token=limited.session_token), metadata=env.gateway),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    setup = await env.stub.BeginTotpSetup(
        S.BeginTotpSetupRequest(session_token=limited.session_token), metadata=env.gateway
    )
    confirmed = await env.stub.ConfirmTotp(
        S.ConfirmTotpRequest(session_token=limited.session_token, code=totp.code_at(setup.secret, time.time())),
        metadata=env.gateway,
    )
    full = await env.stub.GetSession(S.GetSessionRequest(session_token=confirmed.session_token), metadata=env.gateway)
    assert full.status == S.SESSION_STATUS_VALID and sorted(full.principal.scopes) == ["read", "send"]
    old = await env.stub.GetSession(S.GetSessionRequest(session_token=limited.session_token), metadata=env.gateway)
    assert old.status == S.SESSION_STATUS_REVOKED
    disable = S.DisableTotpRequest(session_token=confirmed.session_token, password=PASSWORD)
    await refused(env.stub.DisableTotp(disable, metadata=env.gateway), grpc.StatusCode.FAILED_PRECONDITION)


async def test_roles_and_organisations_on_every_rpc(make_env):
    # Admin RPCs refuse editors and viewers; service RPCs refuse users; an admin of another organisation
    # gets NOT_FOUND for this organisation's users and sees none of its audit events. An admin cannot
    # grant owner, and the last owner can be neither demoted nor disabled. A disabled user cannot log in.
    env = await make_env()
    org = env.boot.organization.id
    bob = await env.add_user("bob", "editor")
    vic = await env.add_user("vic", "viewer")
    admin = await env.add_user("ada", "admin")
    other_org = env.sql("INSERT INTO auth.organizations (name) VALUES ('Other') RETURNING id")[0][0]
    intruder = env.as_user(other_org, 999, "admin")
    admin_calls = [
        ("CreateUser", S.CreateUserRequest(login="zed", email="z@example.org", role="viewer")),
        ("Unlock", S.UnlockRequest(user_id=bob.id)),
        ("RequestPasswordReset", S.RequestPasswordResetRequest(user_id=bob.id)),
        ("UpdateUserRole", S.UpdateUserRoleRequest(user_id=bob.id, role="viewer")),
        ("DisableUser", S.DisableUserRequest(user_id=bob.id)),
        ("GetOrganization", S.GetOrganizationRequest()),
        ("SetOrganizationSettings", S.SetOrganizationSettingsRequest()),
        ("ListAuditEvents", S.ListAuditEventsRequest()),
        ("ListUsers", S.ListUsersRequest()),
    ]
    for name, request in admin_calls:
        for who, role in ((bob, "editor"), (vic, "viewer")):
            await refused(
                getattr(env.stub, name)(request, metadata=env.as_user(org, who.id, role)),
                grpc.StatusCode.PERMISSION_DENIED,
            )
        if name in ("Unlock", "RequestPasswordReset", "UpdateUserRole", "DisableUser"):
            await refused(getattr(env.stub, name)(request, metadata=intruder), grpc.StatusCode.NOT_FOUND)
    await refused(
        env.stub.RevokeApiToken(S.RevokeApiTokenRequest(token_id=1), metadata=intruder), grpc.StatusCode.NOT_FOUND
    )
    assert list((await env.stub.ListAuditEvents(S.ListAuditEventsRequest(), metadata=intruder)).events) == []
    assert (await env.stub.GetOrganization(S.GetOrganizationRequest(), metadata=intruder)).id == other_org

    bearer = [("authorization", f"Bearer {env.boot.api_token}")]
    service_calls = [
        ("Login", S.LoginRequest()), ("GetSession", S.GetSessionRequest()), ("Logout", S.LogoutRequest()),
        ("ListSessions", S.ListSessionsRequest()), ("RevokeSession", S.RevokeSessionRequest()),
        ("ChangePassword", S.ChangePasswordRequest()), ("ResetPassword", S.ResetPasswordRequest()),
        ("BeginTotpSetup", S.BeginTotpSetupRequest()), ("ConfirmTotp", S.ConfirmTotpRequest()),
        ("DisableTotp", S.DisableTotpRequest()), ("RecordAuditEvent", S.RecordAuditEventRequest(action="x.y")),
    ]  # fmt: skip
    for name, request in service_calls:
        await refused(getattr(env.stub, name)(request, metadata=bearer), grpc.StatusCode.PERMISSION_DENIED)
    # A session belongs to its user: bob cannot revoke alice's session by id.
    alice_session = await env.login("alice", PASSWORD)
    bob_session = await env.login("bob", PASSWORD)
    await refused(
        env.stub.RevokeSession(
            S.RevokeSessionRequest(session_token=bob_session.session_token, session_id=alice_session.session_id),
            metadata=env.gateway,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    mine = await env.stub.ListSessions(
        S.ListSessionsRequest(session_token=bob_session.session_token), metadata=env.gateway
    )
    assert [s.id for s in mine.sessions] == [bob_session.session_id] and mine.sessions[0].current

    ada = env.as_user(org, admin.id, "admin")
    await refused(
        env.stub.UpdateUserRole(S.UpdateUserRoleRequest(user_id=bob.id, role="owner"), metadata=ada),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    alice_id = env.boot.user.id
    assert "last owner" in await refused(
        env.stub.UpdateUserRole(S.UpdateUserRoleRequest(user_id=alice_id, role="admin"), metadata=env.owner),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await refused(
        env.stub.DisableUser(S.DisableUserRequest(user_id=alice_id), metadata=env.owner),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert (
        await env.stub.UpdateUserRole(S.UpdateUserRoleRequest(user_id=bob.id, role="viewer"), metadata=ada)
    ).role == "viewer"
    disabled = await env.stub.DisableUser(S.DisableUserRequest(user_id=bob.id), metadata=ada)
    assert disabled.HasField("disabled_at")
    got = await env.stub.GetSession(S.GetSessionRequest(session_token=bob_session.session_token), metadata=env.gateway)
    assert got.status == S.SESSION_STATUS_REVOKED
    assert (await env.login("bob", PASSWORD)).status == S.LOGIN_STATUS_FAILED


async def test_an_admin_cannot_make_itself_owner(make_env):
    # The attack: admin ada mints an API token for the owner alice and, calling with it, makes herself
    # owner. A token is now only ever issued to its creator: ada asking for alice's is refused, so is
    # asking for more than her role (or than the credentials she calls with) grants, and the token she
    # may have is hers, so UpdateUserRole(ada, owner) with it is refused. The owner/admin rules stand: an
    # admin grants no one owner, changes no owner's role, disables no owner, creates no owner; the last
    # owner cannot be demoted; an owner can hand over ownership.
    env = await make_env()
    org, alice = env.boot.organization.id, env.boot.user.id
    ada = await env.add_user("ada", "admin")
    eddie = await env.add_user("eddie", "editor")
    vic = await env.add_user("vic", "viewer")
    ada_md = env.as_user(org, ada.id, "admin")

    def tokens_of(user_id: int) -> int:
        return env.sql("SELECT count(*) FROM auth.api_tokens WHERE user_id = %s", (user_id,))[0][0]

    # Not for the owner, and not even the owner's own token mints one for somebody else.
    owner_token = [("authorization", f"Bearer {env.boot.api_token}")]
    for metadata, victim in ((ada_md, alice), (owner_token, eddie.id)):
        steal = S.CreateApiTokenRequest(user_id=victim, name="x", scopes=["read"])
        assert "only ever issued to its creator" in await refused(
            env.stub.CreateApiToken(steal, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )
    assert tokens_of(alice) == 1 and tokens_of(eddie.id) == 0
    await refused(
        env.stub.CreateApiToken(S.CreateApiTokenRequest(name="x", scopes=["owner"]), metadata=ada_md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for who, role, scopes in ((eddie, "editor", ["read", "admin"]), (vic, "viewer", ["send"])):
        assert "more than a user with role" in await refused(
            env.stub.CreateApiToken(
                S.CreateApiTokenRequest(name="x", scopes=scopes), metadata=env.as_user(org, who.id, role)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    mine = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="ada", scopes=["admin"]), metadata=ada_md)
    assert mine.token.user_id == ada.id
    ada_token = [("authorization", f"Bearer {mine.secret}")]
    await refused(
        env.stub.UpdateUserRole(S.UpdateUserRoleRequest(user_id=ada.id, role="owner"), metadata=ada_token),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reader = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="r", scopes=["read"]), metadata=ada_md)
    assert "more than the credentials" in await refused(
        env.stub.CreateApiToken(
            S.CreateApiTokenRequest(name="w", scopes=["send"]), metadata=[("authorization", f"Bearer {reader.secret}")]
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    for metadata in (ada_md, ada_token):
        for request in (
            S.UpdateUserRoleRequest(user_id=eddie.id, role="owner"),
            S.UpdateUserRoleRequest(user_id=alice, role="admin"),
        ):
            await refused(env.stub.UpdateUserRole(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED)
        await refused(
            env.stub.DisableUser(S.DisableUserRequest(user_id=alice), metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await refused(
            env.stub.CreateUser(
                S.CreateUserRequest(login="o2", email="o2@example.org", role="owner"), metadata=metadata
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    roles = {u.login: u.role for u in (await env.stub.ListUsers(S.ListUsersRequest(), metadata=env.owner)).users}
    assert roles == {"alice": "owner", "ada": "admin", "eddie": "editor", "vic": "viewer"}

    alice_to_admin = S.UpdateUserRoleRequest(user_id=alice, role="admin")
    assert "last owner" in await refused(
        env.stub.UpdateUserRole(alice_to_admin, metadata=env.owner), grpc.StatusCode.FAILED_PRECONDITION
    )
    promoted = await env.stub.UpdateUserRole(S.UpdateUserRoleRequest(user_id=ada.id, role="owner"), metadata=env.owner)
    assert promoted.role == "owner"
    assert (await env.stub.UpdateUserRole(alice_to_admin, metadata=env.owner)).role == "admin"
    await refused(
        env.stub.UpdateUserRole(
            S.UpdateUserRoleRequest(user_id=ada.id, role="editor"), metadata=env.as_user(org, ada.id, "owner")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_each_user_manages_their_own_tokens_and_an_admin_everyone_s(make_env):
    # Any role may make tokens for itself, up to its role; a viewer lists and revokes only its own (the
    # owner's are NOT_FOUND to it), an admin lists and revokes anyone's in the organisation.
    env = await make_env()
    org = env.boot.organization.id
    vic = await env.add_user("vic", "viewer")
    vic_md = env.as_user(org, vic.id, "viewer")
    own = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="cli", scopes=["read"]), metadata=vic_md)
    assert (own.token.user_id, list(own.token.scopes)) == (vic.id, ["read"])
    principal = await env.stub.Authenticate(S.AuthenticateRequest(token=own.secret), metadata=env.gateway)
    assert (principal.user_id, principal.role, list(principal.scopes)) == (vic.id, "viewer", ["read"])
    listed = (await env.stub.ListApiTokens(S.ListApiTokensRequest(), metadata=vic_md)).tokens
    assert [t.id for t in listed] == [own.token.id]
    [boot_token] = [
        t
        for t in (await env.stub.ListApiTokens(S.ListApiTokensRequest(), metadata=env.owner)).tokens
        if t.user_id == env.boot.user.id
    ]
    await refused(
        env.stub.RevokeApiToken(S.RevokeApiTokenRequest(token_id=boot_token.id), metadata=vic_md),
        grpc.StatusCode.NOT_FOUND,
    )
    everyone = (await env.stub.ListApiTokens(S.ListApiTokensRequest(), metadata=env.owner)).tokens
    assert {t.user_id for t in everyone} == {env.boot.user.id, vic.id}
    revoked = await env.stub.RevokeApiToken(S.RevokeApiTokenRequest(token_id=own.token.id), metadata=env.owner)
    assert revoked.HasField("revoked_at")
    again = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="cli2", scopes=["read"]), metadata=vic_md)
    assert (await env.stub.RevokeApiToken(S.RevokeApiTokenRequest(token_id=again.token.id), metadata=vic_md)).HasField(
        "revoked_at"
    )


async def test_tokens_an_admin_issued_to_someone_else_are_revoked_on_upgrade(
    make_env, database_url, nats_server, internal_key
):
    # Before the fix an admin could issue a token to the owner. The upgrade revokes every token whose
    # audited creator is not its holder (such a token is how an admin became owner), and leaves the
    # bootstrap token and tokens people made for themselves alone.
    env = await make_env()
    alice = env.boot.user.id
    ada = await env.add_user("ada", "admin")
    mine = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="mine", scopes=["read"]), metadata=env.owner)
    # What the old CreateApiToken stored when ada issued a token to alice.
    stolen = env.sql(
        "INSERT INTO auth.api_tokens (organization_id, user_id, name, scopes, prefix, secret_hash) "
        "VALUES (%s, %s, 'stolen', '{read,send,admin}', 'abcd1234', 'x') RETURNING id",
        (env.boot.organization.id, alice),
    )[0][0]
    env.sql(
        "INSERT INTO auth.audit_events (organization_id, user_id, action, target, detail) "
        "VALUES (%s, %s, 'api_token.created', %s, %s)",
        (env.boot.organization.id, ada.id, f"api_token:{stolen}", json.dumps({"user_id": alice})),
    )
    env.sql("DELETE FROM auth.schema_migrations WHERE version = '0005_revoke_tokens_minted_for_others.sql'")
    running = await start(config(database_url, nats_server, internal_key))
    await running.stop()
    revoked = dict(env.sql("SELECT name, revoked_at IS NOT NULL FROM auth.api_tokens"))
    assert revoked == {"bootstrap": False, "mine": False, "stolen": True}
    assert mine.token.name == "mine"


async def test_audit_events_recorded_and_paged(make_env):
    # Auth records its own events (logins, failures, user and token changes) with the source address;
    # another service records one for the relayed principal's organisation; an admin lists them newest
    # first in keyset pages, filtered by action prefix and time range.
    env = await make_env()
    await env.login("alice", "wrong-password-x", ip="192.0.2.1")
    await env.login("alice", PASSWORD, ip="192.0.2.1")
    bob = await env.add_user("bob", "viewer")
    token = await env.stub.CreateApiToken(S.CreateApiTokenRequest(name="t", scopes=["read"]), metadata=env.owner)
    await env.stub.RevokeApiToken(S.RevokeApiTokenRequest(token_id=token.token.id), metadata=env.owner)
    campaigns = [
        (
            IDENTITY_HEADER,
            env.signer.sign(
                Principal(env.boot.organization.id, env.boot.user.id, ("send",), "owner", "campaigns"), "auth"
            ),
        )
    ]
    campaigns_channel = default_pki().channel(env.port, "campaigns")
    as_campaigns = auth_pb2_grpc.AuthServiceStub(campaigns_channel)
    recorded = await as_campaigns.RecordAuditEvent(
        S.RecordAuditEventRequest(action="campaign.sent", target="campaign:7", detail_json='{"recipients": 3}'),
        metadata=campaigns,
    )
    assert recorded.service == "campaigns" and recorded.organization_id == env.boot.organization.id
    await refused(
        as_campaigns.RecordAuditEvent(S.RecordAuditEventRequest(action="Bad Action"), metadata=campaigns),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await campaigns_channel.close()

    pages, token_ = [], ""
    while True:
        page = await env.stub.ListAuditEvents(
            S.ListAuditEventsRequest(page_size=3, page_token=token_), metadata=env.owner
        )
        pages.append(list(page.events))
        token_ = page.next_page_token
        if not token_:
            break
    events = [e for p in pages for e in p]
    assert len(pages) > 2 and all(len(p) == 3 for p in pages[:-1])
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    actions = [e.action for e in events]
    for action in (
        "login.failed",
        "login.succeeded",
        "user.created",
        "user.invited",
        "password.reset",
        "api_token.created",
        "api_token.revoked",
        "campaign.sent",
    ):
        assert action in actions, action
    failed = next(e for e in events if e.action == "login.failed")
    assert failed.source_ip == "192.0.2.1" and json.loads(failed.detail_json) == {"reason": "wrong_password"}
    created = next(e for e in events if e.action == "user.created")
    assert created.source_ip == "198.51.100.9" and created.target == f"user:{bob.id}"

    logins = await env.stub.ListAuditEvents(S.ListAuditEventsRequest(action="login."), metadata=env.owner)
    assert {e.action for e in logins.events} == {"login.failed", "login.succeeded"}
    later = S.ListAuditEventsRequest()
    later.since.CopyFrom(recorded.at)
    assert [e.action for e in (await env.stub.ListAuditEvents(later, metadata=env.owner)).events] == ["campaign.sent"]
    earlier = S.ListAuditEventsRequest()
    earlier.until.CopyFrom(recorded.at)
    assert "campaign.sent" not in [
        e.action for e in (await env.stub.ListAuditEvents(earlier, metadata=env.owner)).events
    ]


async def test_totp_secret_is_sealed_at_rest_and_survives_key_rotation(
    make_env, database_url, nats_server, internal_key, capsys
):
    # Scenario: alice turns on TOTP under key OLD; the users table holds a seal, not the secret. Auth
    # restarted with NEW,OLD reseals it under NEW, and an auth knowing only NEW logs her in with a code.
    # A secret an older version stored in plaintext is sealed at start. With no key that opens it, a
    # code fails (auth still starts, and logs why) while a recovery code still logs her in.
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    env = await make_env(totp_keys=(old_key,))
    session = (await env.login("alice", PASSWORD)).session_token
    setup = await env.stub.BeginTotpSetup(S.BeginTotpSetupRequest(session_token=session), metadata=env.gateway)
    (pending,) = env.sql("SELECT totp_pending_secret FROM auth.users WHERE login = 'alice'")[0]
    assert setup.secret not in pending and Fernet(old_key).decrypt(pending.encode()).decode() == setup.secret
    confirm = S.ConfirmTotpRequest(session_token=session, code=totp.code_at(setup.secret, time.time()))
    codes = list((await env.stub.ConfirmTotp(confirm, metadata=env.gateway)).recovery_codes)

    def stored() -> str:
        return env.sql("SELECT totp_secret FROM auth.users WHERE login = 'alice'")[0][0]

    assert setup.secret not in stored() and Fernet(old_key).decrypt(stored().encode()).decode() == setup.secret

    async def login_with_code(keys: tuple[bytes, ...], code: str) -> int:
        # Another auth replica on the same database, with these keys; the code may be reused.
        env.sql("UPDATE auth.users SET totp_last_step = 0 WHERE login = 'alice'")
        running = await start(config(database_url, nats_server, internal_key, totp_keys=keys))
        try:
            async with default_pki().channel(running.grpc_port, "gateway") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                request = S.LoginRequest(login="alice", password=PASSWORD, totp_code=code, source_ip="203.0.113.5")
                return (await stub.Login(request, metadata=env.gateway)).status
        finally:
            await running.stop()

    now = totp.code_at(setup.secret, time.time())
    assert await login_with_code((new_key, old_key), now) == S.LOGIN_STATUS_OK
    assert Fernet(new_key).decrypt(stored().encode()).decode() == setup.secret
    assert await login_with_code((new_key,), now) == S.LOGIN_STATUS_OK

    env.sql("UPDATE auth.users SET totp_secret = %s WHERE login = 'alice'", (setup.secret,))
    assert await login_with_code((new_key,), now) == S.LOGIN_STATUS_OK
    assert setup.secret not in stored() and Fernet(new_key).decrypt(stored().encode()).decode() == setup.secret

    assert await login_with_code((Fernet.generate_key(),), now) == S.LOGIN_STATUS_FAILED
    logged = capsys.readouterr().out
    assert "totp secret cannot be opened: was its key removed from AUTH_TOTP_KEYS?" in logged
    assert setup.secret not in logged and new_key.decode() not in logged and old_key.decode() not in logged
    recovered = await env.login("alice", PASSWORD, recovery_code=codes[0])
    assert recovered.status == S.LOGIN_STATUS_OK
