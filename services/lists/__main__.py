"""Run the lists service until SIGTERM or SIGINT: `python -m services.lists`."""

from services.common.lifecycle import run_service
from services.lists.config import Config
from services.lists.service import start


def main() -> None:
    """Read the settings, start the lists service and serve until signalled."""
    run_service("lists", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
