"""python -m services.campaigns"""

import asyncio

from services.campaigns.config import Config
from services.campaigns.service import start
from services.common.lifecycle import serve_until_signalled
from services.common.log import configure_logging
from services.common.tracing import setup_tracing


def main() -> None:
    """Run the campaigns service until SIGTERM/SIGINT."""
    configure_logging("campaigns")
    setup_tracing("campaigns")
    config = Config.from_env()
    asyncio.run(serve_until_signalled(lambda: start(config), "campaigns"))


if __name__ == "__main__":
    main()
