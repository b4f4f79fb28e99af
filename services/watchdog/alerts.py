"""The watchdog's rules: which observations make an alert, when it is mailed, when the all-clear follows.

Plain values in, notices out: the service feeds observations (health answers, the senders' backlog,
deliveries and bounces seen) with the time they were made, and mails what `Watch.evaluate` returns.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a condition becomes an alert."""

    # A service must fail its health check this long before the operators are told.
    down_after: float = 60.0
    # The senders' backlog may stand still this long.
    queue_wait: float = 900.0
    # Bounce and complaint rates over this window, once it holds at least min_deliveries attempts.
    rate_window: float = 3600.0
    min_deliveries: int = 100
    bounce_rate: float = 0.05
    complaint_rate: float = 0.003


@dataclass(frozen=True)
class Notice:
    """One mail to the operators: an alert that started, or the all-clear of one that ended."""

    key: str
    firing: bool
    subject: str
    body: str


@dataclass(frozen=True)
class Backlog:
    """The senders' queue as NATS reports it: messages waiting and not yet acknowledged, and the ack floor."""

    waiting: int
    ack_floor: int


@dataclass
class _Condition:
    since: dt.datetime | None = None
    firing: bool = False


@dataclass
class Watch:
    """The state of every condition between two evaluations."""

    thresholds: Thresholds
    _conditions: dict[str, _Condition] = field(default_factory=dict)
    _health: dict[str, str] = field(default_factory=dict)
    _backlog: Backlog | None = None
    _backlog_still_since: dt.datetime | None = None
    _deliveries: deque[dt.datetime] = field(default_factory=deque)
    _bounces: deque[dt.datetime] = field(default_factory=deque)
    _complaints: deque[dt.datetime] = field(default_factory=deque)

    # ------------------------------------------------------------------------------- observations

    def health(self, service: str, answer: str) -> None:
        """The service's health answer: SERVING, or what went wrong instead."""
        self._health[service] = answer

    def backlog(self, backlog: Backlog | None, now: dt.datetime) -> None:
        """The senders' backlog now (None: NATS could not say)."""
        if backlog is None or backlog.waiting == 0:
            self._backlog_still_since = None
        elif self._backlog is None or backlog.ack_floor != self._backlog.ack_floor or self._backlog.waiting == 0:
            # Progress (or a new backlog): the wait starts again from here.
            self._backlog_still_since = now
        self._backlog = backlog

    def delivered(self, at: dt.datetime, count: int = 1) -> None:
        """Delivery attempts that reached a server's answer (sent or refused)."""
        self._deliveries.extend([at] * count)

    def bounced(self, at: dt.datetime) -> None:
        """A hard or soft bounce came back."""
        self._bounces.append(at)

    def complained(self, at: dt.datetime) -> None:
        """A recipient reported a message as spam (a feedback report)."""
        self._complaints.append(at)

    # ------------------------------------------------------------------------------- evaluation

    def evaluate(self, now: dt.datetime) -> list[Notice]:
        """The notices due now: each alert once when it starts, and once when it ends."""
        t = self.thresholds
        notices: list[Notice] = []
        for service, answer in sorted(self._health.items()):
            notices += self._judge(
                f"health:{service}", answer != "SERVING", now, t.down_after,
                alert=(f"[mailblast] {service} が応答しません / {service} is not answering",
                       f"{service} のヘルスチェックが {t.down_after:.0f} 秒以上失敗しています。\n"
                       f"The health check of {service} has failed for {t.down_after:.0f} s or more: {answer}."),
                clear=(f"[mailblast] {service} が復旧しました / {service} is answering again",
                       f"{service} のヘルスチェックが再び成功しています。\n"
                       f"The health check of {service} passes again."),
            )  # fmt: skip
        waited = (now - self._backlog_still_since).total_seconds() if self._backlog_still_since else 0.0
        waiting = self._backlog.waiting if self._backlog else 0
        notices += self._judge(
            "queue", self._backlog_still_since is not None, now, t.queue_wait, started=self._backlog_still_since,
            alert=("[mailblast] 送信キューが滞っています / the send queue is not moving",
                   f"{waiting} 件のバッチが {waited:.0f} 秒以上進んでいません。\n"
                   f"{waiting} batches have waited {waited:.0f} s with no progress (threshold {t.queue_wait:.0f} s)."),
            clear=("[mailblast] 送信キューが再び進んでいます / the send queue is moving again",
                   "送信キューが進んでいます。\nThe senders are taking the queue again."),
        )  # fmt: skip
        for name, seen, limit, ja in (
            ("bounce", self._bounces, t.bounce_rate, "バウンス率"),
            ("complaint", self._complaints, t.complaint_rate, "苦情率"),
        ):
            rate, attempts = self._rate(seen, now)
            high = attempts >= t.min_deliveries and rate > limit
            notices += self._judge(
                f"rate:{name}", high, now, 0.0,
                alert=(f"[mailblast] {ja}が上昇しています / the {name} rate jumped",
                       f"直近 {t.rate_window:.0f} 秒の{ja}: {rate:.1%} ({attempts} 件中)。上限 {limit:.1%}。\n"
                       f"{name} rate over the last {t.rate_window:.0f} s: {rate:.1%} of {attempts} deliveries "
                       f"(limit {limit:.1%})."),
                clear=(f"[mailblast] {ja}が下がりました / the {name} rate is back under its limit",
                       f"直近の{ja}: {rate:.1%}。\nThe {name} rate is {rate:.1%} now (limit {limit:.1%})."),
            )  # fmt: skip
        return notices

    def _rate(self, seen: deque[dt.datetime], now: dt.datetime) -> tuple[float, int]:
        start = now - dt.timedelta(seconds=self.thresholds.rate_window)
        for events in (self._deliveries, self._bounces, self._complaints):
            while events and events[0] < start:
                events.popleft()
        attempts = len(self._deliveries)
        return (len(seen) / attempts if attempts else 0.0), attempts

    def _judge(
        self,
        key: str,
        bad: bool,
        now: dt.datetime,
        after: float,
        *,
        alert: tuple[str, str],
        clear: tuple[str, str],
        started: dt.datetime | None = None,
    ) -> list[Notice]:
        condition = self._conditions.setdefault(key, _Condition())
        if not bad:
            condition.since = None
            if condition.firing:
                condition.firing = False
                return [Notice(key, False, *clear)]
            return []
        if condition.since is None:
            condition.since = started or now
        if not condition.firing and (now - condition.since).total_seconds() >= after:
            condition.firing = True
            return [Notice(key, True, *alert)]
        return []
