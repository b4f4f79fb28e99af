"""Run the sender service until SIGTERM or SIGINT: `python -m services.sender`."""

from services.common.lifecycle import run_service
from services.sender.config import Config
from services.sender.service import start


def main() -> None:
    """Read the settings, start the sender service and serve until signalled."""
    run_service("sender", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
