"""``python -m imagine_bot.core.sandbox --port 8787``: serve the sandbox gateway standalone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from imagine_bot.core.sandbox.server import DEFAULT_DELAYS, serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imagine_bot.core.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port to bind (default 8787; 0 picks one)")
    parser.add_argument("--delay-scale", type=float, default=1.0,
                        help="multiply the time each task spends in each state (default 1.0)")
    parser.add_argument("--dialect", choices=("kie", "modkie"), default="kie", help="answer shape (default kie)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    delays = {state: seconds * args.delay_scale for state, seconds in DEFAULT_DELAYS.items()}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port, delays=delays, dialect=args.dialect))


if __name__ == "__main__":
    main()
