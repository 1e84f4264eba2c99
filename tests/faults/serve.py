"""Run one coord server whose peers reach it through a proxy.

``coord serve`` listens for peers on ``server.peer_address``, and the
configuration must list that same address for the server itself.  Under the
fault harness every member's configured peer address is its *proxy* (the
same table on every server, as the replicated configuration requires), so
the real listening port has to differ from the configured one.  This entry
point loads the configuration exactly as ``coord serve`` does and only
replaces the address the peer transport binds to:

    python -m tests.faults.serve --config server1.toml --peer-listen 127.0.0.1:40001

(A server option such as ``server.peer_listen_address`` would let the
harness run the stock ``coord serve``; nothing else differs.)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from coord.server.app import run_app
from coord.server.config import ConfigError, load_config, parse_addr


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--peer-listen", required=True, help="host:port the peer transport binds to")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config)
        cfg = dataclasses.replace(cfg, peer_address=parse_addr(args.peer_listen, "--peer-listen"))
    except ConfigError as e:
        sys.exit(f"bad configuration: {e}")
    try:
        run_app(cfg)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
