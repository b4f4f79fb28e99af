"""Run the auth service: `python -m services.auth`."""

import asyncio

from services.auth.config import Config
from services.auth.service import start
from services.common.lifecycle import serve_until_signalled
from services.common.log import configure_logging
from services.common.tracing import setup_tracing

if __name__ == "__main__":
    configure_logging("auth")
    setup_tracing("auth")
    asyncio.run(serve_until_signalled(lambda: start(Config.from_env()), "auth"))
