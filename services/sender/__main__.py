"""Run the sender service until SIGTERM or SIGINT: `python -m services.sender`."""

import gc

import uvloop

from services.common.lifecycle import run_service
from services.sender.config import Config
from services.sender.service import Running, start

# Collections of the youngest generation once per this many new container objects (Python's default: 700).
# The send path makes a few dozen per message (tasks, futures, coroutines, lists), so the default ran a
# collection every few messages, and each walked the survivors: 14% of the sender's CPU under make bench.
_GC_THRESHOLD = 50_000


async def _start() -> Running:
    running = await start(Config.from_env())
    # What start-up built (modules, protobuf descriptors, compiled templates, pools) lives as long as
    # the process: left out of every later collection.
    gc.freeze()
    return running


def main() -> None:
    """Read the settings, start the sender service and serve until signalled.

    On uvloop, whose event loop and TLS transport are C: the send path is mostly loop and TLS work (its
    share was measured with the sender's other changes, not alone: bench/README.md).
    """
    gc.set_threshold(_GC_THRESHOLD, 20, 100)
    run_service("sender", _start, loop_factory=uvloop.new_event_loop)


if __name__ == "__main__":
    main()
