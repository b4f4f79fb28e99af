"""Run the lists service: `python -m services.lists`."""

import asyncio

from services.common.lifecycle import serve_until_signalled
from services.common.log import configure_logging
from services.common.tracing import setup_tracing
from services.lists.config import Config
from services.lists.service import start

if __name__ == "__main__":
    configure_logging("lists")
    setup_tracing("lists")
    asyncio.run(serve_until_signalled(lambda: start(Config.from_env()), "lists"))
