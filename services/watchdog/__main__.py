"""Run the watchdog until SIGTERM or SIGINT: `python -m services.watchdog`."""

from services.common.lifecycle import run_service
from services.watchdog.config import Config
from services.watchdog.service import start


def main() -> None:
    """Read the settings, start the watchdog and watch until signalled."""
    run_service("watchdog", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
