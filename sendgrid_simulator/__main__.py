"""`python -m sendgrid_simulator`: run the simulator in the foreground for the local demo.

The first stdout line is JSON: {"base_url": ..., "lists": {name: id}, "fields": {name: id}}.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from sendgrid_simulator.simulator import Simulator


def _list_arg(value: str) -> tuple[str, str | None]:
    name, _, list_id = value.partition("=")
    return name, list_id or None


def _field_arg(value: str) -> tuple[str, str]:
    name, _, field_type = value.partition(":")
    return name, field_type or "Text"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendgrid_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", default=[], help="a valid key with all scopes (repeatable)")
    parser.add_argument("--create-list", action="append", default=[], type=_list_arg, metavar="NAME[=UUID]")
    parser.add_argument("--create-field", action="append", default=[], type=_field_arg,
                        metavar="NAME:Text|Number|Date")
    parser.add_argument("--validate-openapi", action="store_true", help="check requests against ../shared/sendgrid")
    parser.add_argument("--job-delay", type=float, default=0.5, help="seconds an import job stays pending")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per second per endpoint")
    args = parser.parse_args(argv)

    sim = Simulator(api_keys={key: None for key in args.api_key or ["SG.local-dev-key"]},
                    validate_openapi=args.validate_openapi, job_delay=args.job_delay, latency=args.latency,
                    rate_limit={"per_second": args.rate_limit} if args.rate_limit else None,
                    host=args.host, port=args.port)
    lists = {name: sim.create_list(name, list_id) for name, list_id in args.create_list}
    fields = {name: sim.create_field(name, field_type) for name, field_type in args.create_field}
    sim.start()
    print(json.dumps({"base_url": sim.base_url, "lists": lists, "fields": fields}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        print("sendgrid simulator stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
