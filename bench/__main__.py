"""`python -m bench [store|hl7|subscriptions|jsonio|audit] [--backends sqlite,postgresql] [--sizes ...]`.

`jsonio` runs in this process, with no database and no gateway.
"""

from __future__ import annotations

import argparse
import asyncio

from bench import audit, hl7, jsonio, store, subscriptions


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "suite", nargs="?", default="all", choices=["all", "store", "hl7", "subscriptions", "jsonio", "audit"]
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--sizes", default="10000,200000", help="stored Observations at which to measure search"
    )
    parser.add_argument("--postgres-url", default=store.DEFAULT_PG_URL)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    if args.suite in ("all", "hl7"):
        asyncio.run(hl7.run(backends, args.postgres_url))
        print()
    if args.suite in ("all", "store"):
        asyncio.run(store.run(backends, sizes, args.postgres_url))
    if args.suite in ("all", "subscriptions"):
        if args.suite == "all":
            print()
        asyncio.run(subscriptions.run(backends, args.postgres_url))
    if args.suite in ("all", "jsonio"):
        if args.suite == "all":
            print()
        jsonio.run()
    if args.suite in ("all", "audit"):
        if args.suite == "all":
            print()
        asyncio.run(audit.run(backends, args.postgres_url))


main()
