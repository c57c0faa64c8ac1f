"""The built wheel, installed into a fresh venv outside the checkout, serves with the default profiles and
mappings it carries (gateway/_shipped, put there by setup.py).

The fresh venv gets the wheel and nothing else of the project; its third-party dependencies come from this
venv's site-packages through a `.pth` line (no download: CI is offline but for the package registries,
and `pip install` of the dependencies is what pip does, not what is under test). A `.pth` line adds a
folder without running the `.pth` files in it, so the checkout's editable install is not seen there.
"""

from __future__ import annotations

import asyncio
import os
import site
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hl7.client import MLLPClient

from tests.integration.conftest import free_ports

ROOT = Path(__file__).resolve().parents[2]
PIP = (sys.executable, "-m", "pip")
WHERE = "import gateway, gateway.settings as s; print(gateway.__file__, s.PROJECT_ROOT, sep='\\n')"

# A potassium result with a LOINC code: the shipped HL7 v2 mappings make it an Observation.
ORU = "\r".join(
    [
        "MSH|^~\\&|WHEELLAB|WHEEL FACILITY|GATEWAY|SPECIALTY RX|20260301083000-0500"
        "||ORU^R01^ORU_R01|W1|P|2.5.1",
        "PID|1||WH1^^^WHEEL&2.16.840.1.113883.19.77&ISO^MR||Wheel^Test||19700101|F",
        "OBR|1|WO1^EHR|WF1^LAB|2823-3^Potassium^LN|||20260301070000-0500"
        "|||||||||||||||20260301083000-0500|||F",
        "OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L^^UCUM|3.5-5.1|N|||F|||20260301080000-0500",
    ]
)


def _install(tmp: Path) -> Path:
    """The wheel built from this checkout, in a new venv; its python."""
    wheels = tmp / "wheels"
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = wheels.glob("specialty_gateway-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    (target,) = (venv / "lib").glob("python3*/site-packages")
    subprocess.run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (target / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.mark.slow
async def test_the_wheel_serves_outside_the_checkout_with_its_shipped_defaults(tmp_path: Path) -> None:
    python = _install(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", WHERE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert where[0].startswith(str(tmp_path / "venv")), where  # not the checkout's package
    assert where[1].endswith("gateway/_shipped"), where

    port, mllp_port = free_ports(2)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(python), "-m", "gateway", "serve", "--port", str(port), "--mllp-port", str(mllp_port)],
        cwd=elsewhere,  # the default SQLite file lands in ./var here
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                try:
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            metadata = (await http.get(f"{base}/fhir/metadata")).json()
        # Topics are read from the shipped profiles/topics.
        topics = [
            ext["valueCanonical"]
            for rest in metadata["rest"]
            for resource in rest["resource"]
            for ext in resource.get("extension", [])
            if ext.get("url", "").endswith("capabilitystatement-subscriptiontopic-canonical")
        ]
        assert any("abnormal" in t for t in topics), topics
        # An HL7 v2 result is mapped by the shipped mappings, stored and acknowledged AA.
        with MLLPClient("127.0.0.1", mllp_port) as mllp:
            reply = mllp.send_message(ORU)
        assert b"MSA|AA|W1" in reply, reply
        assert (elsewhere / "var" / "gateway.db").exists()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
