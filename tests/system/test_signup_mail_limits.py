"""Double opt-in cannot be used to mail-bomb someone: confirmation mails per address are limited."""

from __future__ import annotations

from pathlib import Path

import pytest_asyncio

from tests.support.clock import MovableClock
from tests.support.console import OWNER, PASSWORD, Console, create_list, start_console
from tests.support.poll import poll

VICTIM = "victim@example.net"


@pytest_asyncio.fixture
async def clock() -> MovableClock:
    """The time the lists service counts its limits in."""
    return MovableClock()


@pytest_asyncio.fixture
async def console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path, clock):
    """The console on real services, the lists service on the test's clock."""
    started = await start_console(
        database_url,
        nats_server,
        internal_key,
        tls_files,
        dkim_keys,
        tmp_path / "outbox",
        clock=clock,
    )
    yield started
    await started.stop()


async def make_form(console: Console, name: str) -> int:
    """A signup form on a new list, through the console."""
    web = console.client()
    assert (await web.login(OWNER, PASSWORD)).status_code == 302
    await web.post("/audience-settings", {"sender_address": "news@news.example.com", "sender_name": "Acme"})
    list_id = await create_list(web, name)
    created = await web.post("/forms", {"list_id": str(list_id), "name": name, "ask_name": "1"})
    assert created.status_code == 302
    return int(created.location.rsplit("/", 1)[1])


def mails_to(console: Console, address: str) -> int:
    """How many mails the catcher has caught for the address."""
    return len(console.catcher.received_by().get(address, []))


async def sign_up(console: Console, form_id: int, address: str) -> tuple[int, str]:
    """A stranger's signup on the public form; the answer's status and page."""
    answer = await console.client().post(f"/f/{form_id}", {"email": address, "name": "誰か"}, csrf=False)
    return answer.status_code, answer.get_data(as_text=True)


async def caught(console: Console, address: str, count: int) -> None:
    """Wait until the catcher holds `count` mails for the address."""

    async def arrived() -> bool:
        return mails_to(console, address) >= count

    await poll(arrived)


async def settled(console: Console, control: str) -> None:
    """Every confirmation asked for so far has been handled: a later one (to `control`) has arrived and
    the sender has nothing under way (it takes messages in the order they were published)."""
    form_id = await make_form(console, f"control {control}")
    await sign_up(console, form_id, control)
    await caught(console, control, 1)
    await console.sender.transactional.idle()


async def test_confirmation_mails_to_one_address_are_limited_per_form_and_per_day(console, clock):
    # A stranger submits the victim's address on form A: one confirmation mail. Submitted again at once
    # (the same minute), the answer is the very same "check your mailbox" page, and no second mail goes.
    # Sixteen minutes later (the clock is moved, the window is fifteen) a new one does. Form B of the same
    # organisation mails it a third time; that is the daily cap across the organisation, so form A,
    # outside its window again, sends nothing; a day later mail goes again.
    form_a = await make_form(console, "A")
    form_b = await make_form(console, "B")
    first = await sign_up(console, form_a, VICTIM)
    assert first[0] == 200
    await caught(console, VICTIM, 1)

    assert await sign_up(console, form_a, VICTIM) == first
    await settled(console, "control1@example.net")
    assert mails_to(console, VICTIM) == 1
    assert console.sql("SELECT count(*) FROM lists.consents") == [(2,)]  # the victim's first, the control's

    clock.advance(minutes=16)
    assert await sign_up(console, form_a, VICTIM) == first
    await caught(console, VICTIM, 2)
    assert (await sign_up(console, form_b, VICTIM))[0] == 200
    await caught(console, VICTIM, 3)

    clock.advance(minutes=16)
    assert await sign_up(console, form_a, VICTIM) == first
    await settled(console, "control2@example.net")
    assert mails_to(console, VICTIM) == 3

    clock.advance(hours=24)
    assert await sign_up(console, form_a, VICTIM) == first
    await caught(console, VICTIM, 4)
