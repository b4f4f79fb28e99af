"""Run the bounce service until SIGTERM or SIGINT: `python -m services.bounce`."""

from services.bounce.config import Config
from services.bounce.service import start
from services.common.lifecycle import run_service


def main() -> None:
    """Read the settings, start the bounce service and serve until signalled."""
    run_service("bounce", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
