"""The SMTP sink of the tests is the development catcher itself."""

from dev.catcher import CaughtMessage, SmtpCatcher
from dev.tls import make_self_signed

SmtpSink = SmtpCatcher

__all__ = ["CaughtMessage", "SmtpSink", "make_self_signed"]
