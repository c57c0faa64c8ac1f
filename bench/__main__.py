"""`python -m bench [store|hl7|subscriptions|auth|jsonio|validation|audit|measures|poison|timeline-stream|cds|
server-cpu|soak|sql] [--backends ...] [--workers N]`.

`jsonio` and `validation` run in this process, with no database and no gateway.
"""

from __future__ import annotations

import argparse
import asyncio

from bench import (
    audit,
    cds,
    hl7,
    jsonio,
    measures,
    poison,
    server_cpu,
    soak,
    sql_work,
    store,
    subscriptions,
    timeline_stream,
    token_abuse,
    validation,
)

SUITES = [
    "all", "store", "hl7", "subscriptions", "auth", "jsonio", "validation", "audit", "measures", "poison",
    "timeline-stream", "cds", "server-cpu", "soak", "sql",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suite", nargs="?", default="all", choices=SUITES)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--sizes", default="10000,200000", help="stored Observations at which to measure search"
    )
    parser.add_argument("--postgres-url", default=store.DEFAULT_PG_URL)
    parser.add_argument("--messages", type=int, default=200_000, help="messages of the soak")
    parser.add_argument("--workers", type=int, default=1, help="gateway serve processes (server-cpu)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    everything = args.suite == "all"
    if args.suite in ("all", "hl7"):
        asyncio.run(hl7.run(backends, args.postgres_url))
        print()
    if args.suite in ("all", "store"):
        asyncio.run(store.run(backends, sizes, args.postgres_url))
    if args.suite in ("all", "subscriptions"):
        if everything:
            print()
        asyncio.run(subscriptions.run(backends, args.postgres_url))
    if args.suite in ("all", "auth"):
        if everything:
            print()
        asyncio.run(token_abuse.run(backends, args.postgres_url))
    if args.suite in ("all", "jsonio"):
        if everything:
            print()
        jsonio.run()
    if args.suite in ("all", "validation"):
        if everything:
            print()
        validation.run()
    if args.suite in ("all", "audit"):
        if everything:
            print()
        asyncio.run(audit.run(backends, args.postgres_url))
    if args.suite in ("all", "measures"):
        if everything:
            print()
        asyncio.run(measures.run(backends, args.postgres_url))
    if args.suite in ("all", "timeline-stream"):
        if everything:
            print()
        asyncio.run(timeline_stream.run(backends, args.postgres_url))
    if args.suite in ("all", "cds"):
        if everything:
            print()
        asyncio.run(cds.run(backends, args.postgres_url))
    if args.suite in ("all", "server-cpu"):
        if everything:
            print()
        asyncio.run(server_cpu.run(backends, args.postgres_url, args.workers))
    if args.suite in ("all", "sql"):
        if everything:
            print()
        asyncio.run(sql_work.run(backends, args.postgres_url))
    if args.suite == "soak":  # not part of "all": it runs for most of an hour
        asyncio.run(soak.run(backends, args.postgres_url, args.messages))
    if args.suite == "poison":  # not part of "all": it is about robustness, not speed
        asyncio.run(poison.run(backends, args.postgres_url))


if __name__ == "__main__":  # not when a benchmark's helper process imports it
    main()
