"""Run the sender: python -m services.sender."""

import asyncio

from services.common.lifecycle import serve_until_signalled
from services.common.log import configure_logging
from services.common.tracing import setup_tracing
from services.sender.config import Config
from services.sender.service import start

configure_logging("sender")
setup_tracing("sender")
asyncio.run(serve_until_signalled(lambda: start(Config.from_env()), "sender"))
