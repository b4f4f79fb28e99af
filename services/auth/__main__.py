"""Run the auth service until SIGTERM or SIGINT: `python -m services.auth`."""

from services.auth.config import Config
from services.auth.service import start
from services.common.lifecycle import run_service


def main() -> None:
    """Read the settings, start the auth service and serve until signalled."""
    run_service("auth", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
