"""Run the campaigns service until SIGTERM or SIGINT: `python -m services.campaigns`."""

from services.campaigns.config import Config
from services.campaigns.service import start
from services.common.lifecycle import run_service


def main() -> None:
    """Read the settings, start the campaigns service and serve until signalled."""
    run_service("campaigns", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
