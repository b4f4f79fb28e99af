"""Run the bounce service: `python -m services.bounce`."""

import asyncio

from services.bounce.config import Config
from services.bounce.service import start
from services.common.lifecycle import serve_until_signalled
from services.common.log import configure_logging
from services.common.tracing import setup_tracing

if __name__ == "__main__":
    configure_logging("bounce")
    setup_tracing("bounce")
    asyncio.run(serve_until_signalled(lambda: start(Config.from_env()), "bounce"))
