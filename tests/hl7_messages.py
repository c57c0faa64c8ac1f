"""HL7 v2 messages for tests, written from the structure of the standard (not copied from anyone)."""

from __future__ import annotations

from collections.abc import Sequence

AUTHORITY = "HOSP&2.16.840.1.113883.19.5&ISO"


def msh(
    event: str,
    control_id: str,
    *,
    application: str = "LABSYS",
    facility: str = "CITY LAB",
    version: str = "2.5.1",
    when: str = "20240301083000-0500",
) -> str:
    structure = {"ORU^R01": "^ORU_R01", "ADT^A40": "^ADT_A39", "RDE^O11": "^RDE_O11"}.get(event, "")
    header = f"MSH|^~\\&|{application}|{facility}|GATEWAY|SPECIALTY RX|{when}"
    return f"{header}||{event}{structure}|{control_id}|P|{version}"


def pid(mrn: str, *, family: str = "Testperson", given: str = "Alex", authority: str = AUTHORITY) -> str:
    return f"PID|1||{mrn}^^^{authority}^MR||{family}^{given}||19800203|F"


def obx(
    n: int,
    code: str,
    value: str,
    *,
    kind: str = "NM",
    units: str = "10*3/uL^^UCUM",
    range_: str = "1.5-8.0",
    flag: str = "",
    status: str = "F",
    system: str = "LN",
    name: str = "",
) -> str:
    observed = "20240301080000-0500"
    return f"OBX|{n}|{kind}|{code}^{name}^{system}||{value}|{units}|{range_}|{flag}|||{status}|||{observed}"


def oru(
    control_id: str,
    mrn: str,
    results: Sequence[str],
    *,
    placer: str = "ORD1001",
    facility: str = "CITY LAB",
    application: str = "LABSYS",
    extra: Sequence[str] = (),
) -> str:
    segments = [
        msh("ORU^R01", control_id, application=application, facility=facility),
        pid(mrn),
        *extra,
        f"ORC|RE|{placer}^EHR|F{placer}^LAB",
        f"OBR|1|{placer}^EHR|F{placer}^LAB|57021-8^CBC W Auto Differential panel^LN|||20240301070000-0500"
        "|||||||||||||||20240301083000-0500|||F",  # OBR-22 report time, OBR-25 status
        *results,
    ]
    return "\r".join(segments) + "\r"


def anc_oru(
    control_id: str, mrn: str, value: str = "1.2", *, status: str = "F", flag: str = "L", **kw: str
) -> str:
    return oru(control_id, mrn, [obx(1, "751-8", value, flag=flag, status=status, name="Neutrophils")], **kw)


def rde(control_id: str, mrn: str, *, control: str = "NW", placer: str = "RX5001") -> str:
    segments = [
        msh("RDE^O11", control_id, application="EHR", facility="CITY HOSPITAL"),
        pid(mrn),
        f"ORC|{control}|{placer}^EHR|||||||20240301090000-0500|||1234567893^Prescriber^Pat^^^^^^NPI",
        "RXE|^BID^^20240301|2555^clozapine 100 MG Oral Tablet^RXNORM|100||mg^mg^UCUM|TAB|"
        "^Take one tablet by mouth twice daily|||60|TAB^tablet|2",
        "RXR|PO^Oral^HL70162",
    ]
    return "\r".join(segments) + "\r"


def compound_rde(control_id: str, mrn: str, *, placer: str = "RX6001") -> str:
    """A compounded clozapine suspension: TQ1 TID at three times, a dose in mg, a route without a coding
    system, and two RXC components (the suspending vehicle and clozapine). The product's own code and name
    (RXE-2) do not name the drug: only the clozapine component does."""
    segments = [
        msh("RDE^O11", control_id, application="EHR", facility="CITY HOSPITAL"),
        pid(mrn),
        f"ORC|NW|{placer}^EHR|||||||20240301090000-0500|||1234567893^Prescriber^Pat^^^^^^NPI",
        "RXE||CMPD-101^Compounded oral suspension 25 mg/mL^L|50||mg^milligram^ISO+|SUSP^Suspension^L|||"
        "|180|mL^milliliter^UCUM|1",
        "TQ1|1||TID|0800~1400~2000|||20240301090000-0500||R^Routine^HL70485",
        "RXR|PO^Oral",
        "RXC|B|ORAPLUS^oral suspending vehicle^L|100|mL^milliliter^UCUM",
        "RXC|A|2626^clozapine^RXNORM|2500|mg^milligram^UCUM",
    ]
    return "\r".join(segments) + "\r"


def a40(control_id: str, survivor_mrn: str, prior_mrn: str) -> str:
    segments = [
        msh("ADT^A40", control_id, application="ADT", facility="CITY HOSPITAL"),
        "EVN|A40|20240301090000-0500",
        pid(survivor_mrn),
        f"MRG|{prior_mrn}^^^{AUTHORITY}^MR",
    ]
    return "\r".join(segments) + "\r"


def ack_code(ack: str) -> str:
    msa = next(line for line in ack.replace("\r\n", "\r").split("\r") if line.startswith("MSA"))
    return msa.split("|")[1]
