"""The `gateway` command. Every option also reads GATEWAY_<NAME> from the environment."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal

import click
import orjson

from gateway import logs
from gateway.settings import Settings, automatic_serve_workers, get_settings


def _configure_logging(level: str, fmt: Literal["text", "json"] | None = None) -> None:
    """Text or JSON lines with correlation ids (gateway/logs.py); the format from GATEWAY_LOG_FORMAT."""
    chosen = fmt or ("json" if os.environ.get("GATEWAY_LOG_FORMAT", "").lower() == "json" else "text")
    logs.configure(level, chosen)


def _banner(settings: Settings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    gw = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith("gateway") else "gateway"
    return "\n".join(
        [
            "",
            "Specialty medication gateway",
            f"  FHIR R4 API     {base}/fhir   (CapabilityStatement: {base}/fhir/metadata)",
            f"  API docs        {base}/docs",
            f"  Health/metrics  {base}/healthz  {base}/metrics",
            f"  HL7 v2          MLLP on {settings.host}:{settings.mllp_port}"
            + ("" if settings.mllp_enabled else " (disabled)")
            + f", POST {base}/hl7v2, `gateway ingest FILE...`",
            f"  Payers          POST {base}/payer/pas/notifications, POST {base}/payer/files"
            + f" ({settings.payers_file or 'no payers file: set GATEWAY_PAYERS_FILE'})",
            f"  Database        {settings.database_url.split('@')[-1]}",
            "",
            "Get a first token:",
            f'  .venv/bin/{gw} clients add my-app --scope "system/*.cruds" --json',
            f"  curl -s -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials {base}/auth/token",
            f'  curl -s -H "Authorization: Bearer ACCESS_TOKEN" {base}/fhir/Patient',
            "",
        ]
    )


@contextlib.contextmanager
def _configuration_errors() -> Iterator[None]:
    """A bad payers, mapping or topic file, or a key-encryption key that is malformed or does not open the
    signing keys, is the operator's to fix: one clear line, exit status 1."""
    from gateway.auth.key_encryption import KeyEncryptionError
    from gateway.mapping.files import MappingError
    from gateway.pa.payers import PayerConfigError
    from gateway.routing.endpoints import AllowlistError
    from gateway.routing.topics import TopicError

    try:
        yield
    except (PayerConfigError, MappingError, TopicError, AllowlistError, KeyEncryptionError) as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@click.group()
@click.version_option(package_name="specialty-gateway")
def main() -> None:
    """Specialty medication gateway: EHR, lab and payer feeds in, FHIR R4 out."""


@main.command()
@click.option("--host", default=None, help="Interface to listen on [GATEWAY_HOST, default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="HTTP port [GATEWAY_PORT, default 8080]")
@click.option(
    "--mllp-port", type=int, default=None, help="HL7 v2 MLLP port [GATEWAY_MLLP_PORT, default 2575]"
)
@click.option(
    "--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL, default SQLite in ./var]"
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Serving processes sharing the ports [GATEWAY_SERVE_WORKERS; default 0: the cores on "
    "PostgreSQL, 1 on SQLite]",
)
def serve(
    host: str | None, port: int | None, mllp_port: int | None, database_url: str | None, workers: int | None
) -> None:
    """Serve the HTTP API; migrates the database on start."""
    settings = get_settings(
        host=host, port=port, mllp_port=mllp_port, database_url=database_url, serve_workers=workers
    )
    _configure_logging(settings.log_level, settings.log_format)
    if settings.otel_endpoint:
        from gateway import tracing

        try:
            tracing.configure(settings.otel_endpoint)
        except ValueError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
    count = settings.serve_workers or automatic_serve_workers(settings.database_url)
    if count > 1:
        _serve_cluster(settings, count)
        return
    with _configuration_errors():
        _run_loop(settings, _serve(settings, banner=settings.banner))


def _serve_cluster(settings: Settings, count: int) -> None:
    """N worker processes on the same ports (gateway/transports/cluster.py), after one start here checked
    the configuration, migrated the database and made the keys, so the workers do not race to."""
    from gateway.service.gateway import Gateway
    from gateway.transports.cluster import Supervisor, worker_command, worker_env

    async def prepare() -> None:
        await (await Gateway.start(settings)).close()

    with _configuration_errors():
        asyncio.run(prepare())
    if settings.log_format == "text":
        click.echo(_banner(settings) + f"\n  ({count} worker processes)", err=True)
    command = worker_command(settings.host, settings.port, settings.mllp_port, settings.database_url)
    raise SystemExit(Supervisor(command, count, worker_env()).run())


def _run_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run a server on the configured event loop (uvloop by default: see `Settings.event_loop`)."""
    factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _exit_after_shutdown(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # unwinds through _serve's `finally`, which closes the gateway


async def _serve(
    settings: Settings, ready: Callable[[], Coroutine[Any, Any, None]] | None = None, *, banner: bool = True
) -> None:
    """Serve until stopped. `ready` (the demo's feed) runs once the HTTP and MLLP listeners accept
    connections, beside the server; if it fails, the server stops and its error is raised."""
    import uvicorn

    from gateway.service.gateway import Gateway
    from gateway.transports.http.app import create_app
    from gateway.transports.http.header_timeout import with_header_timeout
    from gateway.transports.http.server import GatewayServer
    from gateway.transports.mllp.pipeline_handler import pipeline_handler
    from gateway.transports.mllp.server import MLLPServer

    gateway = await Gateway.start(settings)
    _tune_garbage_collection()
    mllp = MLLPServer(
        pipeline_handler(gateway.pipeline),
        max_message_bytes=settings.mllp_max_bytes,
        idle_timeout=settings.mllp_idle_timeout_seconds,
        frame_timeout=settings.mllp_frame_timeout_seconds,
        max_connections=settings.mllp_max_connections,
        max_buffered_bytes=settings.mllp_max_buffered_bytes,
    )
    # Worker processes start now, in the background: the first big message finds them ready.
    warming = asyncio.create_task(gateway.workers.warm()) if settings.workers > 0 else None
    try:
        await gateway.pipeline.start()
        await gateway.start_background()
        if settings.mllp_enabled:
            await mllp.start(settings.host, settings.mllp_port, reuse_port=settings.reuse_port)
        app = create_app(settings, gateway)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            # uvicorn has no deadline for request headers: this protocol adds one (slowloris)
            http=with_header_timeout(settings.http_header_timeout_seconds, settings.http_parser),
            limit_concurrency=settings.http_max_concurrency,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,  # a TLS proxy in front (README: Security)
        )
        server = GatewayServer(config, on_shutdown=gateway.timeline_feed.close)  # open streams end first
        if banner and settings.log_format == "text":  # JSON logs stay machine-readable
            click.echo(_banner(settings), err=True)
        # uvicorn shuts down on SIGTERM, then restores the previous handler and raises the signal again;
        # with the default handler the process would end right there, before the gateway below is closed
        # (the audit queue written, delivery leases released). Exit cleanly after closing instead.
        signal.signal(signal.SIGTERM, _exit_after_shutdown)
        if ready is None:
            sockets = None
            if settings.reuse_port:  # a cluster's worker (gateway/transports/cluster.py)
                from gateway.transports.cluster import reuse_port_socket

                sockets = [reuse_port_socket(settings.host, settings.port)]
            await server.serve(sockets=sockets)
        else:
            await _serve_with(server, ready)
    finally:
        if warming is not None and not warming.done():
            warming.cancel()
        if settings.mllp_enabled:
            await mllp.stop()
        await gateway.close()


async def _serve_with(server: Any, ready: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Serve, and run `ready` once the server has started; a failure of `ready` stops the server."""
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn offers a flag, no event)
        await asyncio.sleep(0.05)
    if serving.done():  # did not start (a port in use): uvicorn said why
        await serving
        raise click.ClickException("the gateway did not start")
    feeding = asyncio.create_task(ready())
    await asyncio.wait({serving, feeding}, return_when=asyncio.FIRST_COMPLETED)
    if not feeding.done():  # stopped (Ctrl-C) while feeding: the feed's calls fail as the server goes
        feeding.cancel()
        with contextlib.suppress(BaseException):
            await feeding
        await serving
        return
    problem = feeding.exception()
    if problem is not None:
        server.should_exit = True
        await serving
        raise problem
    await serving


def _tune_garbage_collection() -> None:
    """Fewer, cheaper collections for a long-running server.

    Everything loaded at start (models, profiles, mappings, code tables) lives as long as the process:
    frozen, the collector stops walking it again and again. Each message allocates thousands of small
    containers that die young and hold no cycles; a larger first generation lets most of them go before a
    collection runs. Measured with `make bench` (HL7 v2 ingest); see the README's benchmark notes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


@main.command()
@click.option(
    "--base-url",
    envvar="GATEWAY_DEMO_BASE_URL",
    default=None,
    help="Feed this running gateway (e.g. http://127.0.0.1:8080) instead of serving one"
    " [GATEWAY_DEMO_BASE_URL]",
)
@click.option(
    "--client-id",
    envvar="GATEWAY_DEMO_CLIENT_ID",
    default=None,
    help="With --base-url: an API client with"
    ' scope "system/*.cruds" (`gateway clients add`) [GATEWAY_DEMO_CLIENT_ID]',
)
@click.option(
    "--client-secret",
    envvar="GATEWAY_DEMO_CLIENT_SECRET",
    default=None,
    help="With --base-url: its secret [GATEWAY_DEMO_CLIENT_SECRET]",
)
@click.option(
    "--mllp-host", default=None, help="With --base-url: the MLLP listener's host [the host of --base-url]"
)
@click.option(
    "--mllp-port", type=int, default=None, help="MLLP port: fed (--base-url) or served [default 2575]"
)
@click.option(
    "--payer-insurer",
    default=None,
    metavar="SYSTEM|VALUE",
    help="With --base-url: the identifier of an insurer the running gateway's payers file lists; the demo's"
    " insurer carries it and the PA request goes through $request-prior-auth to that payer. Without it the"
    " demo records the request as a PA Task and plays the payer through POST /payer/files",
)
@click.option("--port", type=int, default=None, help="Served: the HTTP port [GATEWAY_PORT, default 8080]")
@click.option(
    "--database-url", default=None, help="Served: the database [a new SQLite file ./var/demo-<time>.db]"
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document")
def demo(
    base_url: str | None,
    client_id: str | None,
    client_secret: str | None,
    mllp_host: str | None,
    mllp_port: int | None,
    payer_insurer: str | None,
    port: int | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Feed a specialty-pharmacy story through the gateway's real paths: pharmacists and patients over the
    FHIR API, a clozapine order, two fills and three weekly ANCs over HL7 v2 (MLLP), a leflunomide order
    over FHIR, prior authorization with a payer. Prints whom the matching assigned and why, and what to
    look at next.

    Without --base-url the demo serves its own gateway on a new SQLite database with a stand-in payer,
    feeds it, and keeps serving until Ctrl-C. With --base-url it feeds a running gateway and exits."""
    from gateway.demo import DemoError

    try:
        if base_url:
            if not client_id or not client_secret:
                raise click.UsageError("--base-url needs --client-id and --client-secret")
            _demo_feed(base_url, (client_id, client_secret), mllp_host, mllp_port, payer_insurer, as_json)
        else:
            if client_id or client_secret or mllp_host or payer_insurer:
                raise click.UsageError(
                    "--client-id, --client-secret, --mllp-host and --payer-insurer go with --base-url"
                )
            _demo_served(port, mllp_port, database_url, as_json)
    except DemoError as exc:
        raise click.ClickException(f"demo: {exc}") from None


def _demo_say(as_json: bool) -> Callable[[str], None]:
    """Progress lines: on stdout, or on stderr when stdout carries the JSON summary."""
    return lambda line: click.echo(line, err=as_json)


def _demo_print(result: Any, access: Any, where: dict[str, Any], as_json: bool) -> None:
    from gateway.demo import report

    if as_json:
        click.echo(orjson.dumps(report.as_json(result, access, where)).decode())
    else:
        click.echo(report.text(result, access, [f"  {k:<10} {v}" for k, v in where.items()]))


def _demo_feed(
    base_url: str,
    client: tuple[str, str],
    mllp_host: str | None,
    mllp_port: int | None,
    payer_insurer: str | None,
    as_json: bool,
) -> None:
    from datetime import UTC, datetime
    from urllib.parse import urlsplit

    from gateway.demo import Access, PayerFeeds, PriorAuth, Story, ThroughPayer, feed, run_id

    insurer: tuple[str, str] | None = None
    prior_auth: PriorAuth = PayerFeeds()
    if payer_insurer:
        system, bar, value = payer_insurer.partition("|")
        if not bar or not system or not value:
            raise click.UsageError(
                "--payer-insurer is SYSTEM|VALUE, e.g. http://hl7.org/fhir/sid/us-npi|1234567893"
            )
        insurer = (system, value)
        prior_auth = ThroughPayer(None, payer_insurer)
    now = datetime.now(UTC)
    story = Story(run_id(now), now)
    host = mllp_host or urlsplit(base_url).hostname or "127.0.0.1"
    say = _demo_say(as_json)
    say(f"gateway demo, run {story.run}: feeding {base_url} (MLLP {host}:{mllp_port or 2575})")
    result = feed(story, base_url, client, (host, mllp_port or 2575), prior_auth, insurer=insurer, say=say)
    _demo_print(result, Access(client[0], None, None), {"mode": "fed a running gateway"}, as_json)


def _can_listen(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _demo_served(port: int | None, mllp_port: int | None, database_url: str | None, as_json: bool) -> None:
    import os
    from datetime import UTC, datetime

    from gateway.demo import (
        FEEDER_SCOPE,
        PAYER_SCOPE,
        READER_SCOPE,
        Access,
        DemoPayer,
        Story,
        ThroughPayer,
        feed,
        run_id,
    )
    from gateway.demo.story import NPI_SYSTEM

    settings = get_settings(port=port, mllp_port=mllp_port)
    for what, number in (("HTTP", settings.port), ("MLLP", settings.mllp_port)):
        if not _can_listen(settings.host, number):
            raise click.ClickException(
                f"{settings.host}:{number} ({what}) is in use: is a gateway running there? Feed it with"
                " `gateway demo --base-url ...`, or serve the demo elsewhere with --port and --mllp-port"
            )
    now = datetime.now(UTC)
    story = Story(run_id(now), now)
    stamp = f"{now:%Y%m%d-%H%M%S}-{story.run[-2:]}"
    var = Path("./var")
    var.mkdir(exist_ok=True)
    database_url = database_url or f"sqlite+aiosqlite:///{var / f'demo-{stamp}.db'}"
    settings = get_settings(port=port, mllp_port=mllp_port, database_url=database_url)
    _configure_logging(os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"))

    async def register(auth: Any) -> dict[str, Any]:
        return {
            kind: await auth.add_client(f"demo-{kind}-{story.run}", scope)
            for kind, scope in (("feeder", FEEDER_SCOPE), ("payer", PAYER_SCOPE), ("reader", READER_SCOPE))
        }

    with _configuration_errors(), _key_errors():
        clients = asyncio.run(_with_auth(settings, register))
    payer = DemoPayer().start()
    try:
        payers_file = var / f"demo-{stamp}-payers.yaml"
        insurer = f"{NPI_SYSTEM}|{story.insurer_npi}"
        payers_file.write_text(payer.payers_file("bluebonnet-demo", insurer, clients["payer"].client_id))
        os.environ["GATEWAY_DEMO_PAYER_TOKEN"] = payer.token  # the payers file's token_env
        settings = get_settings(
            port=port, mllp_port=mllp_port, database_url=database_url, payers_file=payers_file
        )
        base = f"http://{settings.host}:{settings.port}"
        payer.gateway_url = base
        payer.gateway_client = (clients["payer"].client_id, clients["payer"].client_secret)
        where = {
            "mode": "served by this command until Ctrl-C",
            "database": settings.database_url.split("@")[-1],
            "payers": f"{payers_file} (the demo payer at {payer.base_url})",
        }
        say = _demo_say(as_json)

        def run() -> None:
            say(f"gateway demo, run {story.run}: serving {base} (MLLP {settings.host}:{settings.mllp_port})")
            for label, value in where.items():
                say(f"  {label:<10} {value}")
            result = feed(
                story,
                base,
                (clients["feeder"].client_id, clients["feeder"].client_secret),
                (settings.host, settings.mllp_port),
                ThroughPayer(payer, "the demo payer"),
                say=say,
            )
            reader = clients["reader"]
            _demo_print(result, Access(reader.client_id, reader.client_secret, READER_SCOPE), where, as_json)
            say("Serving until Ctrl-C (the database stays; delete it when done).")

        async def ready() -> None:
            await asyncio.to_thread(run)

        # Ctrl-C as well as SIGTERM: stop serving, close the gateway, exit 0.
        signal.signal(signal.SIGINT, _exit_after_shutdown)
        with _configuration_errors():
            _run_loop(settings, _serve(settings, ready, banner=False))
    finally:
        payer.stop()


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--source", "source_name", default="file", show_default=True, help="Name recorded as the messages' source"
)
@click.option("--reprocess", "reprocess_ids", multiple=True, help="Run a logged message again by its log id")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def ingest(
    paths: tuple[Path, ...], source_name: str, reprocess_ids: tuple[str, ...], database_url: str | None
) -> None:
    """Feed HL7 v2 files (single messages, several per file, FHS/BHS batches) through the pipeline, and
    payers' files (X12 278 responses, CSV status files) onto their prior-authorization Tasks."""
    if not paths and not reprocess_ids:
        raise click.UsageError("name files to ingest or --reprocess IDs")
    settings = get_settings(database_url=database_url)
    _configure_logging("WARNING")
    with _configuration_errors():
        summary = asyncio.run(_ingest(settings, paths, source_name, reprocess_ids))
    click.echo(summary.report())
    if summary.failed:
        sys.exit(1)


async def _ingest(
    settings: Settings, paths: tuple[Path, ...], source_name: str, reprocess_ids: tuple[str, ...]
) -> Any:
    from gateway.service.gateway import Gateway
    from gateway.service.ingest import ingest_files, reprocess

    gateway = await Gateway.start(settings)
    try:
        if reprocess_ids:
            return await reprocess(gateway, reprocess_ids)
        return await ingest_files(gateway, paths, source_name, click.progressbar)
    finally:
        await gateway.close()


@main.command()
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def migrate(database_url: str | None) -> None:
    """Apply database migrations (serve does this on start)."""
    from gateway.store import migrate as migrations
    from gateway.store.database import Database

    settings = get_settings(database_url=database_url)

    async def run() -> None:
        db = Database(settings.database_url)
        try:
            await migrations.upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(run())
    click.echo("database is up to date")


@main.group()
def clients() -> None:
    """Register, list, disable, enable and remove API clients."""


async def _with_auth(settings: Settings, action: Any) -> Any:
    from gateway.service.access.clients import AuthService, key_encryption_from
    from gateway.store import migrate as migrations
    from gateway.store.database import Database

    kek = key_encryption_from(settings)
    db = Database(settings.database_url)
    auth = AuthService.from_settings(db, settings, key_encryption=kek)
    try:
        await migrations.upgrade(db, key_encryption=kek)
        return await action(auth)
    finally:
        auth.close()
        await db.dispose()


@contextlib.contextmanager
def _key_errors() -> Iterator[None]:
    """A key-encryption key that is malformed or does not open the stored keys: one line, exit 1."""
    from gateway.auth.key_encryption import KeyEncryptionError
    from gateway.store.clients import DuplicateKey

    try:
        yield
    except KeyEncryptionError as exc:
        raise click.ClickException(f"key encryption: {exc}") from None
    except DuplicateKey as exc:
        raise click.ClickException(str(exc)) from None


@clients.command("add")
@click.argument("name")
@click.option(
    "--scope", required=True, help='SMART v2 scopes, e.g. "system/*.cruds" or "system/Observation.rs"'
)
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JWKS file: the client authenticates with private_key_jwt instead of a secret",
)
@click.option("--json", "as_json", is_flag=True, help="Print the credentials as JSON")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def clients_add(
    name: str, scope: str, jwks_file: Path | None, as_json: bool, database_url: str | None
) -> None:
    """Register a client and print its client_id and client_secret (shown only once)."""
    from gateway.auth.scopes import InvalidScope
    from gateway.store.clients import DuplicateClient

    settings = get_settings(database_url=database_url)
    jwks = orjson.loads(jwks_file.read_bytes()) if jwks_file else None
    try:
        created = asyncio.run(_with_auth(settings, lambda auth: auth.add_client(name, scope, jwks=jwks)))
    except (InvalidScope, DuplicateClient, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    answer = {
        "client_id": created.client_id,
        "client_secret": created.client_secret,
        "name": name,
        "scope": scope,
    }
    if as_json:
        click.echo(orjson.dumps(answer).decode())
        return
    click.echo(f"client_id:     {created.client_id}")
    if created.client_secret:
        click.echo(f"client_secret: {created.client_secret}   (shown once; only its hash is stored)")
    click.echo(f"scope:         {scope}")


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def clients_list(as_json: bool, database_url: str | None) -> None:
    """List registered clients (never their secrets)."""
    settings = get_settings(database_url=database_url)
    records = asyncio.run(_with_auth(settings, lambda auth: auth.list_clients()))
    rows = [
        {
            "client_id": r.client_id,
            "name": r.name,
            "scope": r.scope,
            "auth": "private_key_jwt" if r.jwks else "secret",
            "state": "disabled" if r.disabled else "enabled",
        }
        for r in records
    ]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        click.echo(f"{row['client_id']}  {row['name']}  [{row['auth']}, {row['state']}]  {row['scope']}")


def _client_change(name_or_id: str, database_url: str | None, change: str) -> None:
    """Remove, disable or enable a client through a started gateway (its subscription hooks included)."""
    settings = get_settings(database_url=database_url)
    _configure_logging("WARNING")
    with _configuration_errors(), _key_errors():
        done = asyncio.run(
            _with_gateway(settings, lambda gw: getattr(gw.auth, f"{change}_client")(name_or_id))
        )
    if not done:
        raise click.ClickException(f"no client named {name_or_id!r}")
    click.echo(f"{change}d {name_or_id}")


@clients.command("remove")
@click.argument("name_or_id")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def clients_remove(name_or_id: str, database_url: str | None) -> None:
    """Remove a client. Its tokens are refused at once by this database's gateways (within
    GATEWAY_AUTH_CACHE_SECONDS in running processes) and its subscriptions are turned off."""
    _client_change(name_or_id, database_url, "remove")


@clients.command("disable")
@click.argument("name_or_id")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def clients_disable(name_or_id: str, database_url: str | None) -> None:
    """Disable a client: its tokens stop working (within GATEWAY_AUTH_CACHE_SECONDS), it gets no new
    ones, and its subscriptions are turned off. `enable` undoes the first two only."""
    _client_change(name_or_id, database_url, "disable")


@clients.command("enable")
@click.argument("name_or_id")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def clients_enable(name_or_id: str, database_url: str | None) -> None:
    """Let a disabled client get tokens again. Tokens issued before it was disabled stay refused; its
    subscriptions stay off until it re-requests them (PUT with status `requested`)."""
    _client_change(name_or_id, database_url, "enable")


@main.group()
def users() -> None:
    """Add, list and disable the people who log in, and reset their passwords (never shown or logged)."""


async def _with_database(settings: Settings, action: Any) -> Any:
    """Run `action(db)` on the migrated database."""
    from gateway.service.access.clients import key_encryption_from
    from gateway.store import migrate as migrations
    from gateway.store.database import Database

    kek = key_encryption_from(settings)
    db = Database(settings.database_url)
    try:
        await migrations.upgrade(db, key_encryption=kek)
        return await action(db)
    finally:
        await db.dispose()


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """An unusable name, role, Practitioner reference or password, a duplicate or unknown user: one line,
    exit status 1."""
    from gateway.auth.passwords import WeakPassword
    from gateway.auth.roles import InvalidAccount
    from gateway.service.access.users import UnknownUser
    from gateway.store.users import DuplicateUser

    with _key_errors():
        try:
            yield
        except (InvalidAccount, WeakPassword, DuplicateUser, UnknownUser) as exc:
            raise click.ClickException(str(exc)) from None


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of standard input, or typed twice at a hidden prompt. Never an
    argument (it would sit in the shell history and in every process listing)."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise click.ClickException("no password on standard input")
        return password
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


_PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of standard input"
)
_DATABASE_URL = click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, help="pharmacist, coordinator, analyst, admin or auditor")
@click.option("--practitioner", default=None, help="The user's Practitioner/ID (required for a pharmacist)")
@_PASSWORD_STDIN
@_DATABASE_URL
def users_add(
    name: str, role: str, practitioner: str | None, password_stdin: bool, database_url: str | None
) -> None:
    """Add a user; the password is asked for (twice, hidden) or read with --password-stdin."""
    from gateway.auth.passwords import check_policy
    from gateway.service.access import users as user_service
    from gateway.store.users import DuplicateUser

    settings = get_settings(database_url=database_url)
    with _user_errors():
        name, role, practitioner = user_service.check_new_user(name, role, practitioner)
        if asyncio.run(_with_database(settings, lambda db: user_service.find_user(db, name))) is not None:
            raise DuplicateUser(f"a user named {name!r} already exists")  # before asking for a password
        password = _read_password(password_stdin)
        check_policy(password, name)
        added = asyncio.run(
            _with_database(
                settings,
                lambda db: user_service.add_user(
                    db, name, role, practitioner, password, cost=settings.password_hash_cost
                ),
            )
        )
    click.echo(f"added {added.name} ({added.role}{', ' + added.practitioner if added.practitioner else ''})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@_DATABASE_URL
def users_list(as_json: bool, database_url: str | None) -> None:
    """List users: name, role, Practitioner, disabled (never their passwords or hashes)."""
    from gateway.service.access import users as user_service

    settings = get_settings(database_url=database_url)
    with _user_errors():
        records = asyncio.run(_with_database(settings, user_service.list_users))
    rows = [
        {"name": r.name, "role": r.role, "practitioner": r.practitioner, "disabled": r.disabled}
        for r in records
    ]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        state = "disabled" if row["disabled"] else "enabled"
        click.echo(f"{row['name']}  {row['role']}  {row['practitioner'] or '-'}  [{state}]")


@users.command("disable")
@click.argument("name")
@_DATABASE_URL
def users_disable(name: str, database_url: str | None) -> None:
    """Disable a user: they can no longer log in."""
    _set_user_disabled(name, True, database_url)


def _set_user_disabled(name: str, disabled: bool, database_url: str | None) -> None:
    from gateway.service.access import users as user_service

    settings = get_settings(database_url=database_url)
    with _user_errors():
        record = asyncio.run(
            _with_database(settings, lambda db: user_service.set_disabled(db, name, disabled))
        )
    click.echo(f"{'disabled' if disabled else 'enabled'} {record.name}")


@users.command("enable")
@click.argument("name")
@_DATABASE_URL
def users_enable(name: str, database_url: str | None) -> None:
    """Enable a disabled user again (their password and any lockout stay as they were)."""
    _set_user_disabled(name, False, database_url)


@users.command("reset-password")
@click.argument("name")
@_PASSWORD_STDIN
@_DATABASE_URL
def users_reset_password(name: str, password_stdin: bool, database_url: str | None) -> None:
    """Set a user's password (asked for, or read with --password-stdin); clears failed logins and any
    lockout. A disabled user stays disabled."""
    from gateway.service.access import users as user_service

    settings = get_settings(database_url=database_url)
    with _user_errors():
        if asyncio.run(_with_database(settings, lambda db: user_service.find_user(db, name))) is None:
            raise user_service.UnknownUser(f"no user named {name!r}")  # before asking for a password
        password = _read_password(password_stdin)
        record = asyncio.run(
            _with_database(
                settings,
                lambda db: user_service.reset_password(db, name, password, cost=settings.password_hash_cost),
            )
        )
    click.echo(f"password changed for {record.name}")


@main.group()
def apps() -> None:
    """Register, list and disable SMART apps (standalone launch; the authorization flow comes later)."""


@contextlib.contextmanager
def _app_errors() -> Iterator[None]:
    """An unusable name, redirect URI or scope, a duplicate or unknown app: one line, exit status 1."""
    from gateway.auth.smart_apps import InvalidApp
    from gateway.service.access.apps import UnknownApp
    from gateway.store.smart_apps import DuplicateApp

    with _key_errors():
        try:
            yield
        except (InvalidApp, DuplicateApp, UnknownApp) as exc:
            raise click.ClickException(str(exc)) from None


def _app_row(record: Any) -> dict[str, Any]:
    return {
        "client_id": record.client_id,
        "name": record.name,
        "type": "confidential" if record.confidential else "public",
        "redirect_uris": list(record.redirect_uris),
        "scope": record.scope,
        "disabled": record.disabled,
    }


@apps.command("add")
@click.argument("name")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    help="Exact redirect URI (repeatable): https, or http only for localhost, 127.0.0.1 or [::1]; "
    "no #fragment",
)
@click.option(
    "--confidential",
    is_flag=True,
    help="The app keeps a secret (a server-side app): it gets a client secret; otherwise it is public "
    "(PKCE only)",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help='Scopes the app may ask for (repeatable, space-separated), e.g. "openid fhirUser launch/patient '
    'patient/*.rs"; user/ and patient/ scopes, openid, fhirUser, launch/patient, offline_access '
    "[default: openid fhirUser launch/patient offline_access patient/*.rs user/*.rs]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registration as JSON")
@_DATABASE_URL
def apps_add(
    name: str,
    redirect_uris: tuple[str, ...],
    confidential: bool,
    scopes: tuple[str, ...],
    as_json: bool,
    database_url: str | None,
) -> None:
    """Register a SMART app and print its client_id and, for a confidential app, its client_secret (shown
    only once; only its hash is stored)."""
    from gateway.auth.smart_apps import DEFAULT_APP_SCOPE
    from gateway.service.access import apps as app_service

    settings = get_settings(database_url=database_url)
    scope = " ".join(scopes) if scopes else DEFAULT_APP_SCOPE
    with _app_errors():
        created = asyncio.run(
            _with_database(
                settings,
                lambda db: app_service.add_app(
                    db, name, redirect_uris, scope, confidential=confidential, cost=settings.secret_hash_cost
                ),
            )
        )
    answer = _app_row(created.record)
    del answer["disabled"]
    if created.client_secret is not None:
        answer["client_secret"] = created.client_secret
    if as_json:
        click.echo(orjson.dumps(answer).decode())
        return
    click.echo(f"client_id:     {answer['client_id']}   ({answer['type']} app {answer['name']})")
    if created.client_secret is not None:
        click.echo(f"client_secret: {created.client_secret}   (shown once; only its hash is stored)")
    for uri in answer["redirect_uris"]:
        click.echo(f"redirect_uri:  {uri}")
    click.echo(f"scope:         {answer['scope']}")


@apps.command("list")
@click.option("--json", "as_json", is_flag=True)
@_DATABASE_URL
def apps_list(as_json: bool, database_url: str | None) -> None:
    """List registered apps (never their secrets or hashes)."""
    from gateway.service.access import apps as app_service

    settings = get_settings(database_url=database_url)
    with _app_errors():
        rows = [_app_row(r) for r in asyncio.run(_with_database(settings, app_service.list_apps))]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        state = "disabled" if row["disabled"] else "enabled"
        uris = " ".join(row["redirect_uris"])
        click.echo(f"{row['client_id']}  {row['name']}  [{row['type']}, {state}]  {uris}  {row['scope']}")


@apps.command("disable")
@click.argument("name")
@_DATABASE_URL
def apps_disable(name: str, database_url: str | None) -> None:
    """Disable an app: it can no longer start an authorization (there is no enable; register it anew)."""
    from gateway.service.access import apps as app_service

    settings = get_settings(database_url=database_url)
    with _app_errors():
        record = asyncio.run(_with_database(settings, lambda db: app_service.disable_app(db, name)))
    click.echo(f"disabled {record.name}")


@main.group()
def keys() -> None:
    """Rotate and list the access-token signing keys (sealed in the database; never shown)."""


@keys.command("rotate")
@click.option(
    "--retire-previous-now",
    is_flag=True,
    help="Refuse the previous key's tokens at once (a key thought compromised) instead of letting"
    " them run out",
)
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def keys_rotate(retire_previous_now: bool, database_url: str | None) -> None:
    """Make a new signing key current. Running gateways sign with it within GATEWAY_AUTH_CACHE_SECONDS;
    the previous key keeps verifying until its tokens have expired (token TTL + 60 s), then is retired
    and erased. Also re-seals every key under the first GATEWAY_KEY_ENCRYPTION_KEY."""
    settings = get_settings(database_url=database_url)
    overlap = 0.0 if retire_previous_now else None
    with _key_errors():
        rotation = asyncio.run(_with_auth(settings, lambda auth: auth.rotate_keys(overlap_seconds=overlap)))
    click.echo(f"current key: {rotation.current}")
    if rotation.previous:
        when = "retired now" if retire_previous_now else "verifies until its tokens expire"
        click.echo(f"previous key: {rotation.previous} ({when})")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def keys_list(as_json: bool, database_url: str | None) -> None:
    """List signing keys: kid, created, state (current, previous until..., retired); never key material."""
    from gateway.fhir import dates

    settings = get_settings(database_url=database_url)
    with _key_errors():
        infos = asyncio.run(_with_auth(settings, lambda auth: auth.list_keys()))

    def instant(us: int | None) -> str | None:
        return dates.format_instant(us) if us is not None else None

    rows = [
        {
            "kid": k.kid,
            "created": instant(k.created_us),
            "state": k.state,
            "retire_after": instant(k.retire_after_us) if k.state == "previous" else None,
            "retired": instant(k.retired_us),
        }
        for k in infos
    ]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        until = f" until {row['retire_after']}" if row["retire_after"] else ""
        click.echo(f"{row['kid']}  created {row['created']}  {row['state']}{until}")


@main.group()
def identity() -> None:
    """Find and repair Patients joined across senders or with conflicting demographics."""


async def _with_gateway(settings: Settings, action: Any) -> Any:
    from gateway.service.gateway import Gateway

    gateway = await Gateway.start(settings)
    try:
        return await action(gateway)
    finally:
        await gateway.close()


@identity.command("audit")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def identity_audit(as_json: bool, database_url: str | None) -> None:
    """List Patients whose data came from several senders through identifiers without an authority, or
    whose demographics changed from one person to another. Prints ids, senders and element names only."""
    from gateway.service.hl7 import identity_repair

    async def run(gateway: Any) -> list[Any]:
        async with gateway.db.read() as conn:
            return await identity_repair.audit(conn)

    settings = get_settings(database_url=database_url)
    _configure_logging("WARNING")
    with _configuration_errors():
        findings = asyncio.run(_with_gateway(settings, run))
    if as_json:
        click.echo(orjson.dumps({"findings": [f.as_json() for f in findings]}).decode())
        return
    if not findings:
        click.echo("no Patient to review")
        return
    for finding in findings:
        senders = ", ".join(finding.senders) or "-"
        line = f"Patient/{finding.patient}  {', '.join(finding.kinds)}  senders: {senders}"
        if finding.elements:
            line += f"  elements: {', '.join(finding.elements)} (versions {finding.versions})"
        click.echo(line)
    click.echo(f"{len(findings)} Patient(s) to review; `gateway identity repair PATIENT_ID` separates them")


@identity.command("repair")
@click.argument("patient_id")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing")
@click.option("--json", "as_json", is_flag=True)
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def identity_repair_command(patient_id: str, dry_run: bool, as_json: bool, database_url: str | None) -> None:
    """Give each sender that wrote PATIENT_ID its own Patient again, rebuilt from its logged messages under
    today's identity rules; each resource moves to the Patient of the sender that last wrote it. The
    sender of the oldest message keeps PATIENT_ID. New versions and a Provenance record the repair."""
    from gateway.service.hl7 import identity_repair

    async def run(gateway: Any) -> Any:
        async with gateway.db.write() as conn:
            return await identity_repair.repair(
                conn, gateway.fhir, gateway.pipeline.translator, patient_id, dry_run=dry_run
            )

    settings = get_settings(database_url=database_url)
    _configure_logging("WARNING")
    try:
        with _configuration_errors():
            done = asyncio.run(_with_gateway(settings, run))
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(done.as_json()).decode())
        return
    for sender, target in done.senders.items():
        moved = done.moved.get(target, [])
        click.echo(f"{sender}: Patient/{target}" + (f" ({len(moved)} resources moved)" if moved else ""))
    for note in done.skipped:
        click.echo(f"skipped message {note}")
    click.echo("dry run: nothing written" if dry_run else f"written: {len(done.written)}; {done.provenance}")


@identity.command("merge")
@click.argument("source_id")
@click.argument("target_id")
@click.option("--database-url", default=None, help="Database URL [GATEWAY_DATABASE_URL]")
def identity_merge(source_id: str, target_id: str, database_url: str | None) -> None:
    """Merge Patient SOURCE_ID into TARGET_ID (one person recorded twice), as an ADT^A40 does: SOURCE
    becomes inactive with a replaced-by link and everything that referred to it moves to TARGET."""
    from gateway.service.hl7 import identity_repair

    async def run(gateway: Any) -> list[str]:
        async with gateway.db.write() as conn:
            return await identity_repair.merge(conn, gateway.fhir, source_id, target_id)

    settings = get_settings(database_url=database_url)
    _configure_logging("WARNING")
    try:
        with _configuration_errors():
            written = asyncio.run(_with_gateway(settings, run))
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"merged Patient/{source_id} into Patient/{target_id}: {len(written)} versions written")


@main.group()
def sandbox() -> None:
    """Exercise a FHIR R4 server (a public sandbox, an EHR's test server) with the gateway's resources."""


@sandbox.command("run")
@click.option(
    "--base-url",
    envvar="GATEWAY_SANDBOX_BASE_URL",
    default="http://hapi.fhir.org/baseR4",
    show_default=True,
    help="The FHIR server's base URL [GATEWAY_SANDBOX_BASE_URL]",
)
@click.option(
    "--client-id",
    envvar="GATEWAY_SANDBOX_CLIENT_ID",
    default=None,
    help="With --client-secret: fetch a token by client credentials from the token endpoint of the server's"
    " /.well-known/smart-configuration [GATEWAY_SANDBOX_CLIENT_ID]",
)
@click.option(
    "--client-secret",
    envvar="GATEWAY_SANDBOX_CLIENT_SECRET",
    default=None,
    help="[GATEWAY_SANDBOX_CLIENT_SECRET]",
)
@click.option(
    "--token", envvar="GATEWAY_SANDBOX_TOKEN", default=None, help="A bearer token [GATEWAY_SANDBOX_TOKEN]"
)
@click.option(
    "--timeout",
    envvar="GATEWAY_SANDBOX_TIMEOUT",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds per request [GATEWAY_SANDBOX_TIMEOUT]",
)
@click.option(
    "--record",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write every request and response to this folder as JSON (credentials redacted)",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document")
def sandbox_run(
    base_url: str,
    client_id: str | None,
    client_secret: str | None,
    token: str | None,
    timeout: float,
    record: Path | None,
    as_json: bool,
) -> None:
    """Read the server's CapabilityStatement; create a made-up test Patient, a clozapine MedicationRequest,
    lab Observations made from an HL7 v2 ORU^R01 by the gateway's translator and a PA Task; read and
    search each back and compare it field by field; delete everything created (even after a failure) and
    check it is gone. Prints a pass/fail table; exit status 1 when a step failed."""
    from datetime import UTC, datetime

    from gateway.sandbox import Recorder, Server, report, run, run_id

    if bool(client_id) != bool(client_secret):
        raise click.UsageError("--client-id and --client-secret go together")
    if client_id and token:
        raise click.UsageError("give --token or --client-id/--client-secret, not both")
    if not base_url.startswith(("http://", "https://")):
        raise click.UsageError(f"--base-url must be an http(s) URL, not {base_url!r}")
    now = datetime.now(UTC).replace(microsecond=0)
    name = run_id(now)
    recorder = None
    if record is not None:
        recorder = Recorder(record)
        recorder.start(
            {
                "run": name,
                "now": now.isoformat(),
                "base_url": base_url.rstrip("/"),
                "client_credentials": bool(client_id),
            }
        )
    credentials = (client_id, client_secret) if client_id and client_secret else None
    with Server(base_url, token=token, timeout=timeout, record=recorder) as server:
        done = run(server, run_id=name, now=now, credentials=credentials)
    click.echo(orjson.dumps(done.as_json()).decode() if as_json else report.table(done))
    if not done.passed:
        sys.exit(1)
