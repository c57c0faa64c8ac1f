"""Subscriber endpoints end to end: a delivery connects to the address that passed the check (never to a
fresh DNS answer), TLS still verifies the host name, allow-list entries with ports, headers a
subscription may not set, failures that do not map the network behind the gateway, and notifications
that carry the version each event was about. Real receivers on 127.0.0.1 and 127.0.0.2; both backends
wherever the store takes part."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.routing.endpoints import Allowlist
from gateway.service.gateway import Gateway
from tests import factories as f
from tests.api.test_subscriptions import abnormal, make_patient, status_of, subscribe, wait_active
from tests.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")

PUBLIC = "93.184.216.34"


def _resolver(answers: dict[str, list[list[str]]], asked: list[str] | None = None) -> Any:
    """A DNS stand-in: each name answers its lists in turn (the last one from then on)."""
    calls: dict[str, int] = {}

    async def resolve(host: str) -> list[str]:
        if asked is not None:
            asked.append(host)
        sequence = answers.get(host, [[]])
        n = calls.get(host, 0)
        calls[host] = n + 1
        return sequence[min(n, len(sequence) - 1)]

    return resolve


async def _wait_status(api: httpx.AsyncClient, sub_id: str, status: str) -> dict[str, Any]:
    for _ in range(1000):
        found = await status_of(api, sub_id)
        if found["status"] == status:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"Subscription/{sub_id} never reached {status}")


# --- the connection goes where the check said ----------------------------------------------------------


async def test_delivery_connects_to_the_checked_address_not_to_a_fresh_answer(
    delivering: Gateway, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check sees `localhost` as 127.0.0.2 (allowed); anything resolving it again would get
    127.0.0.1 (not allowed). Only the checked address may be reached."""
    checked = Receiver(host="127.0.0.2")
    elsewhere = Receiver(port=checked.port)  # 127.0.0.1, same port
    try:
        manager = delivering.subscriptions
        monkeypatch.setattr(manager, "allowlist", Allowlist.parse("127.0.0.2"))
        monkeypatch.setattr(manager, "addresses", _resolver({"localhost": [["127.0.0.2"]]}))
        endpoint = checked.url("/pin", host="localhost")
        sub_id = await subscribe(api, f.subscription("abnormal-lab-result", endpoint))
        await api.post("/fhir/Observation", json=abnormal(await make_patient(api)))
        await checked.until(lambda: checked.events("/pin"), timeout=10)
        await wait_active(api, sub_id)
        assert [r.kind for r in checked.on("/pin")] == ["handshake", "event-notification"]
        assert checked.on("/pin")[0].headers["host"] == f"localhost:{checked.port}"  # the name, not the IP
        assert elsewhere.connections == 0 and elsewhere.received == []
    finally:
        checked.stop()
        elsewhere.stop()


async def test_an_answer_that_turns_private_after_the_check_reaches_nothing(
    delivering: Gateway, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: public when the Subscription is written, 127.0.0.1 when the deliverer looks."""
    local = Receiver()
    try:
        manager = delivering.subscriptions
        monkeypatch.setattr(manager, "allowlist", Allowlist.parse(""))
        monkeypatch.setattr(manager, "addresses", _resolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]}))
        sub_id = await subscribe(
            api, f.subscription("abnormal-lab-result", f"https://rebind.test:{local.port}/x")
        )
        status = await _wait_status(api, sub_id, "error")
        assert "loopback, private or reserved" in status["error"]["text"]
        assert local.connections == 0 and local.received == []
    finally:
        local.stop()


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest_asyncio.fixture
async def tls_receiver(tmp_path: Any) -> AsyncIterator[tuple[Receiver, ssl.SSLContext]]:
    """A TLS receiver on 127.0.0.2 for `hooks.test`, and a client context that trusts only its certificate."""
    cert, key = _self_signed("hooks.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    receiver = Receiver(host="127.0.0.2", tls=server)
    yield receiver, ssl.create_default_context(cadata=cert.decode())
    receiver.stop()


async def test_tls_to_the_pinned_address_sends_the_name_and_verifies_the_certificate_for_it(
    tls_receiver: tuple[Receiver, ssl.SSLContext],
) -> None:
    from gateway.service.subscriptions.endpoint_transport import CheckedTransport

    receiver, trust = tls_receiver
    resolve = _resolver({"hooks.test": [["127.0.0.2"]], "other.test": [["127.0.0.2"]]})
    transport = CheckedTransport(resolve, lambda: Allowlist.parse("127.0.0.2"), verify=trust)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        answer = await client.post(receiver.url("/t", host="hooks.test"), content=b"{}")
        assert answer.status_code == 200
        assert receiver.sni == ["hooks.test"]
        assert receiver.on("/t")[0].headers["host"] == f"hooks.test:{receiver.port}"
        # The same checked address under another name: its certificate does not match, so no request.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await client.post(receiver.url("/t", host="other.test"), content=b"{}")
        assert receiver.sni == ["hooks.test", "other.test"]
        assert len(receiver.on("/t")) == 1


async def test_the_transport_refuses_before_connecting_and_resolves_each_host_once() -> None:
    from gateway.service.subscriptions.endpoint_transport import CheckedTransport, EndpointRefused

    local = Receiver()
    try:
        asked: list[str] = []
        resolve = _resolver({"hook.test": [["127.0.0.1"]], "open.test": [["127.0.0.1"]]}, asked)
        transport = CheckedTransport(resolve, lambda: Allowlist.parse("open.test"))
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(EndpointRefused, match="loopback, private or reserved"):
                await client.post(f"https://hook.test:{local.port}/x", content=b"{}")
            assert local.connections == 0
            answer = await client.post(f"http://open.test:{local.port}/y", content=b"{}")
            assert answer.status_code == 200 and local.connections == 1
            assert asked == ["hook.test", "open.test"]
    finally:
        local.stop()


# --- allow-list ports ---------------------------------------------------------------------------------


async def test_an_allowlist_entry_with_a_port_allows_that_port_only(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivering.subscriptions, "allowlist", Allowlist.parse(f"127.0.0.1:{receiver.port}"))
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/port")))
    await wait_active(api, sub_id)
    assert receiver.on("/port")[0].kind == "handshake"
    other = await api.post(
        "/fhir/Subscription",
        json=f.subscription("abnormal-lab-result", f"http://127.0.0.1:{receiver.port + 1}/port"),
    )
    assert other.status_code == 422
    assert "GATEWAY_SUBSCRIPTION_ALLOWLIST" in other.json()["issue"][0]["diagnostics"]


# --- headers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["Host: billing.internal", "X-Signature: forged", "Transfer-Encoding: chunked", "connection: close"],
)
async def test_channel_header_may_not_set_what_the_gateway_or_the_connection_owns(
    api: httpx.AsyncClient, header: str
) -> None:
    resource = f.subscription(
        "abnormal-lab-result", "http://127.0.0.1:9/x", headers=("Authorization: Bearer t", header)
    )
    answer = await api.post("/fhir/Subscription", json=resource)
    assert answer.status_code == 422, answer.text
    (issue,) = answer.json()["issue"]
    assert issue["expression"] == ["Subscription.channel.header[1]"]
    assert header.split(":")[0] in issue["diagnostics"]
    assert (await api.get("/fhir/Subscription")).json().get("total") == 0


# --- what failures tell -------------------------------------------------------------------------------


class _Listener:
    """A TCP service that is not the subscriber's HTTP endpoint: it greets and hangs up, or says nothing."""

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.port = 0
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> _Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.greeting is None:
            self._held.append(writer)  # silent: keep it open
            return
        await reader.readuntil(b"\r\n\r\n")  # the request's head, then an answer that is not HTTP
        writer.write(self.greeting)
        await writer.drain()
        writer.close()

    async def __aexit__(self, *_: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()


def _with_timeout(resource: dict[str, Any], seconds: int) -> dict[str, Any]:
    resource["channel"].setdefault("extension", []).append(
        {"url": f"{f.BACKPORT}/backport-timeout", "valueUnsignedInt": seconds}
    )
    return resource


async def test_failures_read_the_same_whether_the_port_is_closed_or_a_service_listens(
    delivering: Gateway, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    closed = Receiver()
    closed.stop()  # nothing listens on its port any more
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    async with _Listener(b"SSH-2.0-OpenSSH_9.6\r\n") as talker, _Listener(None) as silent:
        ids = {
            name: await subscribe(
                api, _with_timeout(f.subscription("abnormal-lab-result", f"http://127.0.0.1:{port}/x"), 1)
            )
            for name, port in (("closed", closed.port), ("talker", talker.port), ("silent", silent.port))
        }
        statuses = {name: await _wait_status(api, sub_id, "error") for name, sub_id in ids.items()}
    for name, sub_id in ids.items():
        assert statuses[name]["error"]["text"] == "handshake failed: connection failed", name
        log = (await api.get(f"/fhir/Subscription/{sub_id}/$delivery-log")).json()["parameter"]
        errors = [p["valueString"] for a in log for p in a["part"] if p["name"] == "error"]
        assert errors == ["connection failed"], name
        stored = (await api.get(f"/fhir/Subscription/{sub_id}")).json()
        assert stored["error"] == "handshake failed: connection failed", name
    # The reason stays in the server's log, by subscription id.
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.delivery"]
    for name, reason in (
        ("closed", "ConnectError"),
        ("talker", "RemoteProtocolError"),
        ("silent", "ReadTimeout"),
    ):
        assert any(f"Subscription/{ids[name]}:" in line and reason in line for line in lines), name


# --- each event's version -----------------------------------------------------------------------------


def _business(code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{f.GATEWAY}/CodeSystem/pa-business-status", "code": code}]}


async def test_a_task_approved_before_delivery_arrives_with_each_version(
    gateway: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """submitted, then approved, both waiting in the outbox: one notification, two events, and the
    approved event's Task is the approved version (not only the submitted one)."""
    sub_id = await subscribe(api, f.subscription("pa-status-changed", receiver.url("/pa")))
    patient_id = await make_patient(api)
    request_id = (await api.post("/fhir/MedicationRequest", json=f.medication_request(patient_id))).json()[
        "id"
    ]
    task = (await api.post("/fhir/Task", json=f.pa_task(patient_id, request_id))).json()
    approved = {**task, "status": "completed", "businessStatus": _business("approved")}
    assert (await api.put(f"/fhir/Task/{task['id']}", json=approved)).status_code == 200
    gateway.deliverer.poll_s = 0.05
    await gateway.deliverer.start()  # only now: both events are delivered together
    try:
        await receiver.until(lambda: receiver.events("/pa"))
        await wait_active(api, sub_id)
    finally:
        await gateway.deliverer.stop()
    (note,) = receiver.events("/pa")
    assert note.event_numbers == [1, 2]
    tasks = [e for e in note.json["entry"][1:] if e["fullUrl"].endswith(f"/Task/{task['id']}")]
    assert [t["resource"]["businessStatus"]["coding"][0]["code"] for t in tasks] == ["submitted", "approved"]
    assert [t["resource"]["meta"]["versionId"] for t in tasks] == ["1", "2"]
    assert [t["response"]["etag"] for t in tasks] == ['W/"1"', 'W/"2"']
    assert [t["response"]["location"] for t in tasks] == [
        f"Task/{task['id']}/_history/1",
        f"Task/{task['id']}/_history/2",
    ]
