"""Subscription benchmark: notification latency under a steady HL7 feed, and matching cost vs registry size.

1. Latency ACK -> receipt. A real `gateway serve` per backend, one rest-hook Subscription (id-only) to
   abnormal-lab-result pointing at an HTTP receiver in this process, and abnormal ORU^R01 messages sent
   over MLLP on a fixed schedule (RATE/s, a pool of connections so one slow ACK does not stall the pace).
   Each message has one OBX, so it makes one Observation and fires one event; the Observation id is
   computed with the gateway's own Translator (ids derive from the message's identifiers), so an
   event's focus maps back to its message without querying anything. Latency = arrival of the
   notification at the receiver - arrival of the message's ACK (both time.time() in this process): how
   long after the sender knew the result was stored the subscriber heard of it. Negative when the
   notification beats the ACK; kept as measured.
2. Matching cost. In process, no HTTP, no deliverer: N Subscriptions to abnormal-lab-result each filtered
   on its own patient, then `SubscriptionManager.match` over a batch of abnormal Observation changes of
   which 1% are about a subscribed patient, at N = 10 and N = 10,000. The in-memory part (evaluator +
   index lookup, what `match` does before writing the outbox) is timed on its own as well.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.harness import ClientCredentials, percentile, running_gateway, throwaway_database
from bench.store import credentials
from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translator
from gateway.fhir.extract import extract
from gateway.mapping import files as mapping_files
from gateway.routing import labs
from gateway.routing.evaluators import EVALUATORS, Change, EvaluationContext
from gateway.routing.filters import index_keys
from gateway.routing.requests import SECRET_EXTENSION
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.store.resources import PendingVersion
from gateway.types import JSON

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
TOPIC = "https://specialty-gateway.org/fhir/SubscriptionTopic/abnormal-lab-result"
ALLOWLIST = "127.0.0.0/8"  # the receiver is on loopback, which the gateway refuses unless allowed

# Part 1: steady feed.
RATE = 200  # messages/s
WARMUP_S = 2.0  # sent at the same pace, left out of the figures (pools, caches, first lane)
MEASURE_S = 15.0
CONNECTIONS = 32  # ACKs take ~50 ms at this rate (group commit, 2 cores): 8 could not keep 200/s
DRAIN_TIMEOUT_S = 30.0
LATENCY_GOAL_S = 0.250

# Part 2: matching cost.
SIZES = (10, 10_000)
EVENTS = 2000
MATCHING = 0.01
REPEATS = 3
CREATE_CHUNK = 1000  # Subscriptions written per transaction when filling the registry


# --- the subscriber --------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server (keep-alive) on 127.0.0.1 that records each POST body and its arrival.

    It runs on the benchmark's event loop and does nothing but read and answer 200; bodies are parsed
    after the run so that receiving stays cheap and the arrival times honest.
    """

    arrivals: list[tuple[float, bytes]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = field(default_factory=dict)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the sockets ends the handlers normally (a cancelled one makes asyncio log noise).
        for writer in list(self._connections):
            writer.close()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.arrivals.append((time.time(), body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._connections.pop(writer, None)

    def focus_arrivals(self) -> dict[str, float]:
        """Observation id -> when the first notification naming it as focus arrived."""
        first: dict[str, float] = {}
        for at, body in self.arrivals:
            status = orjson.loads(body)["entry"][0]["resource"]
            for parameter in status["parameter"]:
                if parameter["name"] != "notification-event":
                    continue
                for part in parameter["part"]:
                    if part["name"] == "focus":
                        focus_id = part["valueReference"]["reference"].rsplit("/", 1)[-1]
                        first.setdefault(focus_id, at)
        return first


# --- messages --------------------------------------------------------------------------------------


def abnormal_oru(run: str, n: int) -> str:
    """One high potassium (OBX-8 H) for a patient and order of its own: one Observation, one event."""
    return (
        "\r".join(
            [
                "MSH|^~\\&|BENCHLAB|BENCH FACILITY|GATEWAY|SPECIALTY RX|20240301083000-0500"
                f"||ORU^R01^ORU_R01|{run}-{n}|P|2.5.1",
                f"PID|1||{run}M{n}^^^BENCH&2.16.840.1.113883.19.99&ISO^MR||Benchmark^Pat||19700101|F",
                f"ORC|RE|{run}P{n}^EHR|{run}F{n}^LAB",
                f"OBR|1|{run}P{n}^EHR|{run}F{n}^LAB|2823-3^Potassium^LN|||20240301070000-0500"
                "||||||||||||||20240301083000-0500|||F",
                "OBX|1|NM|2823-3^Potassium^LN||6.1|mmol/L^^UCUM|3.5-5.1|H|||F|||20240301080000-0500",
            ]
        )
        + "\r"
    )


def observation_ids(texts: list[str]) -> list[str]:
    """The id the gateway gives each message's Observation, from its own Translator and mappings.

    Also checks the premise of the benchmark: every message yields exactly one abnormal Observation.
    """
    settings = Settings()
    translator = Translator(
        mapping_files.load(settings.mappings_dir),
        default_zone=mapping_files.default_zone(settings.hl7_default_offset),
    )
    ids = []
    for text in texts:
        produced = [p.resource for p in translator.translate(Message(text)).resources]
        observations = [r for r in produced if r["resourceType"] == "Observation"]
        if len(observations) != 1 or not labs.is_abnormal(observations[0]):
            raise RuntimeError("each benchmark message must make exactly one abnormal Observation")
        ids.append(str(observations[0]["id"]))
    return ids


# --- part 1: latency under a steady feed ------------------------------------------------------------


@dataclass
class FeedResult:
    sent: list[float]  # time.time() each message went out
    acked: list[float]  # time.time() its ACK arrived
    max_lag_s: float  # worst delay of a send behind its schedule


async def paced_feed(port: int, texts: list[str], rate: float) -> FeedResult:
    """Send `texts` at `rate`/s by schedule; a pool of connections takes whatever is due."""
    sent = [0.0] * len(texts)
    acked = [0.0] * len(texts)
    due: asyncio.Queue[int] = asyncio.Queue()

    async def schedule() -> None:
        start = time.perf_counter() + 0.05
        for i in range(len(texts)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due.put_nowait(i)
        for _ in range(CONNECTIONS):
            due.put_nowait(-1)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        try:
            while (i := await due.get()) >= 0:
                sent[i] = time.time()
                writer.write(b"\x0b" + texts[i].encode() + b"\x1c\x0d")
                await writer.drain()
                ack = await reader.readuntil(b"\x1c\x0d")
                acked[i] = time.time()
                if b"MSA|AA" not in ack:
                    raise RuntimeError(f"message {i} not accepted: {ack[:300]!r}")
        finally:
            writer.close()

    await asyncio.gather(schedule(), *[connection() for _ in range(CONNECTIONS)])
    # How far sends fell behind the schedule (all connections busy waiting for ACKs).
    return FeedResult(sent, acked, max(s - (sent[0] + i / rate) for i, s in enumerate(sent)))


def subscription(endpoint: str, patient: str | None = None) -> JSON:
    """A rest-hook, id-only Subscription to abnormal-lab-result, optionally for one patient only."""
    resource: JSON = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "benchmark",
        "criteria": TOPIC,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}]
            },
        },
        "extension": [{"url": SECRET_EXTENSION, "valueString": "bench-secret-0123456789"}],
    }
    if patient is not None:
        resource["_criteria"] = {
            "extension": [
                {"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f"patient={patient}"}
            ]
        }
    return resource


async def subscribe(http: httpx.AsyncClient, endpoint: str) -> str:
    resource = subscription(endpoint)
    answer = await http.post("/Subscription", json=resource)
    answer.raise_for_status()
    sub_id = str(answer.json()["id"])
    for _ in range(300):
        status = (await http.get(f"/Subscription/{sub_id}/$status")).json()["entry"][0]["resource"]
        if any(p["name"] == "status" and p["valueCode"] == "active" for p in status["parameter"]):
            return sub_id
        await asyncio.sleep(0.05)
    raise RuntimeError(f"Subscription/{sub_id} never became active (is the allow-list set?)")


async def latency(backend: str, postgres_url: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    warmup = int(WARMUP_S * RATE)
    texts = [abnormal_oru(run, n) for n in range(warmup + int(MEASURE_S * RATE))]
    focus_ids = observation_ids(texts)
    receiver = Receiver()
    await receiver.start()
    env = {"GATEWAY_SUBSCRIPTION_ALLOWLIST": ALLOWLIST}
    try:
        async with throwaway_database(backend, postgres_url) as url, running_gateway(url, env) as server:
            auth: ClientCredentials = await credentials(url, server.base_url)
            async with httpx.AsyncClient(base_url=f"{server.base_url}/fhir", auth=auth, timeout=60) as http:
                await subscribe(http, receiver.url)
            feed = await paced_feed(server.mllp_port, texts, RATE)
            wanted = set(focus_ids[warmup:])
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline and not wanted <= receiver.focus_arrivals().keys():
                await asyncio.sleep(0.25)
    finally:
        await receiver.stop()
    arrivals = receiver.focus_arrivals()
    measured = range(warmup, len(texts))
    latencies = [arrivals[focus_ids[i]] - feed.acked[i] for i in measured if focus_ids[i] in arrivals]
    send_span = feed.sent[-1] - feed.sent[warmup]
    ack_span = max(feed.acked[warmup:]) - feed.sent[warmup]
    return {
        "backend": backend,
        "latencies": latencies,
        "expected": len(measured),
        "send_rate": (len(measured) - 1) / send_span,
        "ack_rate": len(measured) / ack_span,
        "max_lag_s": feed.max_lag_s,
        "ack_latencies": [feed.acked[i] - feed.sent[i] for i in measured],
        "notifications": len(receiver.arrivals),
    }


# --- part 2: matching cost against the registry size ------------------------------------------------


def abnormal_observation(patient: str) -> JSON:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2024-03-01T08:30:00Z",
        "valueQuantity": {
            "value": 6.1,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        "referenceRange": [
            {"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.1, "unit": "mmol/L"}}
        ],
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
    }


def changes_for(subscribed: int, rng: random.Random) -> list[Change]:
    """EVENTS creations of abnormal Observations; MATCHING of them about a subscribed patient p{i}."""
    hits = set(rng.sample(range(EVENTS), int(EVENTS * MATCHING)))
    changes = []
    for n in range(EVENTS):
        patient = f"Patient/p{rng.randrange(subscribed)}" if n in hits else f"Patient/q{n}"
        obs = {**abnormal_observation(patient), "id": f"bench-{n}"}
        changes.append(Change("Observation", f"bench-{n}", 1, None, obs, extract(obs, ())))
    return changes


async def add_subscriptions(gateway: Gateway, ctx: RequestContext, first: int, last: int) -> None:
    """Subscriptions for patients p{first}..p{last - 1}, many per transaction.

    Through `write_versions`, the path every write takes (observers included), in chunks rather than
    one `FhirService.create` each, only so that filling 10,000 takes seconds, not minutes; the cost of
    one ordinary create at each size is measured separately (`one_create_s`).
    """
    endpoint = "http://127.0.0.1:9/hook"  # never called: the deliverer does not run here
    for start in range(first, last, CREATE_CHUNK):
        now = int(time.time() * 1_000_000)
        pending: list[PendingVersion] = [
            gateway.fhir.plan_new(ctx, subscription(endpoint, f"Patient/p{i}"), f"sub-p{i}", "POST", now)
            for i in range(start, min(last, start + CREATE_CHUNK))
        ]
        async with gateway.db.write() as conn:
            await gateway.fhir.write_versions(conn, ctx, pending)
    await gateway.subscriptions.reload()


def in_memory_matches(gateway: Gateway, changes: list[Change]) -> int:
    """What `match`/`emit` compute before touching the outbox: evaluators, then the index lookup."""
    manager = gateway.subscriptions
    context = EvaluationContext(manager.rules)
    matched = 0
    for change in changes:
        for topic in manager.topics.for_type(change.type):
            if not manager.index.has_topic(topic.url) or change.interaction not in topic.interactions:
                continue
            for event in EVALUATORS[topic.evaluator](change, context):
                keys = index_keys(change.index)
                matched += len(manager.index.match(topic.url, keys | event.keys if event.keys else keys))
    return matched


async def time_match(gateway: Gateway, changes: list[Change]) -> tuple[float, float, int]:
    """Best of REPEATS: (s per event for `match` in a write transaction, s per event in memory, matches)."""
    full, memory = [], []
    matched = 0
    for _ in range(REPEATS):
        async with gateway.db.write() as conn:
            started = time.perf_counter()
            await gateway.subscriptions.match(conn, changes)
            full.append((time.perf_counter() - started) / len(changes))
        started = time.perf_counter()
        matched = in_memory_matches(gateway, changes)
        memory.append((time.perf_counter() - started) / len(changes))
    return min(full), min(memory), matched


async def one_create_s(gateway: Gateway, ctx: RequestContext, patient: str) -> float:
    """One Subscription created the ordinary way (`FhirService.create`), for the cost at this size."""
    body = orjson.dumps(subscription("http://127.0.0.1:9/hook", patient))
    started = time.perf_counter()
    await gateway.fhir.create(ctx, "Subscription", body, None)
    return time.perf_counter() - started


async def matching(backend: str, postgres_url: str) -> dict[str, Any]:
    rng = random.Random(11)
    result: dict[str, Any] = {"backend": backend, "sizes": {}}
    async with throwaway_database(backend, postgres_url) as url:
        gateway = await Gateway.start(Settings(database_url=url, subscription_allowlist=ALLOWLIST))
        # No delivery here: the deliverer is never started, so events only go to the outbox.
        try:
            ctx = RequestContext(base_url="http://127.0.0.1:8080/fhir")  # internal caller: no grants
            have = 0
            for size in SIZES:
                started = time.perf_counter()
                await add_subscriptions(gateway, ctx, have, size)
                fill_s, have = time.perf_counter() - started, size
                assert len(gateway.subscriptions.index) == size
                changes = changes_for(size, rng)
                full, memory, matched = await time_match(gateway, changes)
                create_s = await one_create_s(gateway, ctx, f"Patient/extra{size}")
                have += 1  # the extra one matches none of the events
                result["sizes"][size] = {
                    "full": full,
                    "memory": memory,
                    "matched": matched,
                    "fill_s": fill_s,
                    "create_s": create_s,
                }
                print(
                    f"  {backend}: {size:>6} subscriptions (filled in {fill_s:.1f} s): match"
                    f" {full * 1e6:.1f} us/event, in memory {memory * 1e6:.1f} us/event,"
                    f" {matched} of {len(changes)} events matched; one more via create:"
                    f" {create_s * 1000:.1f} ms"
                )
        finally:
            await gateway.close()
    return result


# --- report ----------------------------------------------------------------------------------------


def describe_latency(r: dict[str, Any]) -> str:
    lat = r["latencies"]
    if not lat:
        return f"  {r['backend']}: no notification arrived"
    negative = sum(1 for v in lat if v < 0)
    return (
        f"  {r['backend']}: ACK -> receipt p50 {percentile(lat, 0.5) * 1000:.1f} ms,"
        f" p99 {percentile(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms,"
        f" min {min(lat) * 1000:.1f} ms ({negative} negative), mean {statistics.fmean(lat) * 1000:.1f} ms;"
        f" delivered {len(lat)}/{r['expected']} in {r['notifications']} notifications;"
        f" sent {r['send_rate']:.1f} msg/s (worst lag behind schedule {r['max_lag_s'] * 1000:.0f} ms),"
        f" ACKed {r['ack_rate']:.1f} msg/s (ACK p50 {percentile(r['ack_latencies'], 0.5) * 1000:.1f} ms,"
        f" p99 {percentile(r['ack_latencies'], 0.99) * 1000:.1f} ms)"
    )


async def run(backends: list[str], postgres_url: str) -> None:
    print(
        f"Subscriptions: abnormal-lab-result notifications at {RATE} ORU/s over {CONNECTIONS} MLLP"
        f" connections ({MEASURE_S:.0f} s after {WARMUP_S:.0f} s warm-up;"
        f" goal p99 < {LATENCY_GOAL_S * 1000:.0f} ms),"
        f" and match cost per event at {' vs '.join(f'{s:,}' for s in SIZES)} subscriptions"
        f" ({MATCHING:.0%} of {EVENTS} events matching, best of {REPEATS})\n"
    )
    latencies, costs = [], []
    for backend in backends:
        result = await latency(backend, postgres_url)
        print(describe_latency(result))
        latencies.append(result)
        costs.append(await matching(backend, postgres_url))
    print("\nbackend     sent/s  delivered     p50 ms   p99 ms   max ms  p99 < 250 ms")
    for r in latencies:
        lat = r["latencies"] or [float("nan")]
        p99 = percentile(lat, 0.99)
        print(
            f"{r['backend']:<10} {r['send_rate']:>7.1f} {len(r['latencies']):>5}/{r['expected']:<5}"
            f" {percentile(lat, 0.5) * 1000:>8.1f} {p99 * 1000:>8.1f} {max(lat) * 1000:>8.1f}"
            f"  {'yes' if p99 < LATENCY_GOAL_S and r['latencies'] else 'NO'}"
        )
        if r["send_rate"] < RATE * 0.95:
            print(f"{'':<10} (the server kept {r['send_rate']:.0f} msg/s, not {RATE})")
    small, large = SIZES
    print(
        f"\nbackend     match us/event @{small:<6} @{large:<6}  ratio"
        f"   in-memory us/event @{small:<6} @{large:<6}  ratio  <= 2x"
    )
    for c in costs:
        s, lg = c["sizes"][small], c["sizes"][large]
        ratio, memory_ratio = lg["full"] / s["full"], lg["memory"] / s["memory"]
        print(
            f"{c['backend']:<10} {'':>15}{s['full'] * 1e6:>7.1f} {lg['full'] * 1e6:>7.1f} {ratio:>6.2f}x"
            f" {'':>19}{s['memory'] * 1e6:>7.1f} {lg['memory'] * 1e6:>7.1f} {memory_ratio:>6.2f}x"
            f"  {'yes' if ratio <= 2 else 'NO'}"
        )
