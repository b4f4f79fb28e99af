"""Run the sender service until SIGTERM or SIGINT: `python -m services.sender`."""

import uvloop

from services.common.lifecycle import run_service
from services.sender.config import Config
from services.sender.service import start


def main() -> None:
    """Read the settings, start the sender service and serve until signalled.

    On uvloop: its event loop and its TLS transport take about half the CPU of asyncio's for the same
    SMTP sessions (make bench), and the send path is loop work for the most part.
    """
    run_service("sender", lambda: start(Config.from_env()), loop_factory=uvloop.new_event_loop)


if __name__ == "__main__":
    main()
