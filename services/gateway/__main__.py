"""Run the console over HTTPS on GATEWAY_BIND (and redirect GATEWAY_HTTP_BIND to it) until SIGTERM or SIGINT."""

from services.common.lifecycle import run_service
from services.gateway.config import Config
from services.gateway.service import start


def main() -> None:
    """Read the settings, start the console and serve until signalled."""
    run_service("gateway", lambda: start(Config.from_env()))


if __name__ == "__main__":
    main()
