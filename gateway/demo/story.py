"""The demo's story as data: who takes part, what happens to them and when, and the messages and
resources that tell it.

Two patients of a specialty pharmacy that serves Texas and California:

- Maria Elena Reyes (San Antonio, TX; prefers Spanish) is started on clozapine by a psychiatrist whose EHR
  sends the order over HL7 v2 (RDE^O11). The pharmacy dispenses twice (RDS^O13), with a gap between the
  fills. The reference lab sends three weekly ANCs (ORU^R01, LOINC 751-8): 2.1, 1.6, then 1.2 x10^3/uL
  flagged low, which the clozapine-anc rule turns into an alert. Her plan asks for prior authorization
  to continue therapy: submitted, pended by the payer, then approved. Her pharmacist calls her.
- James Whitaker (Sacramento, CA; English) is started on leflunomide by a rheumatologist whose EHR
  writes the order over the FHIR API; the lab sends his baseline ALT (normal).

Three pharmacists work for the pharmacy: Lucía Hernández (Spanish and English, licensed in Texas,
antipsychotics), Megan Walsh (English, Texas, antipsychotics and DMARDs) and Andrew Kim (English,
California, DMARDs). Nobody assigns a pharmacist by hand: the gateway does on each patient's first
specialty order.

Everything here is invented (names, addresses, NPIs, licence numbers); the NPIs carry a valid check digit.
Identifiers of people who would be the same in another run (pharmacists, prescribers, the insurer) are
fixed; those of patients, orders, messages and lab accessions carry the run's suffix, so a second run
into the same database makes new patients instead of colliding with the first.

Pure: builds JSON and ER7 text; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.pharmacist.facts import BCP47_SYSTEM, CASELOAD_CAPACITY, PLAN_NET_QUALIFICATION, USPS_SYSTEM
from gateway.pharmacist.vocabulary import GATEWAY

JSON = dict[str, Any]

SNOMED = "http://snomed.info/sct"
PHARMACIST_ROLE = {"system": SNOMED, "code": "46255001", "display": "Pharmacist"}
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
QUALIFICATION_CODES = "http://terminology.hl7.org/CodeSystem/v2-0360"
# The drug classes of mappings/monitoring/drug-lab.yaml (`drug_class`): matching compares the code only
# (any system), so the roles' specialties carry them under this demo's own system.
DRUG_CLASS_SYSTEM = f"{GATEWAY}/CodeSystem/demo-drug-class"
INTERVENTION_TYPE = f"{GATEWAY}/CodeSystem/intervention-type"
INTERVENTION_OUTCOME = f"{GATEWAY}/StructureDefinition/intervention-outcome"
# Fixed systems of this demo's organisations (OIDs under HL7's example arc 2.16.840.1.113883.19).
TX_MRN_OID = "2.16.840.1.113883.19.5"
CA_MRN_OID = "2.16.840.1.113883.19.6"
STAFF_SYSTEM = f"{GATEWAY}/demo/staff"
MEMBER_SYSTEM = "urn:oid:2.16.840.1.113883.19.7"
CA_ORDER_SYSTEM = "urn:oid:2.16.840.1.113883.19.6.1"

# HL7 v2 senders (MSH-3 / MSH-4): the Texas EHR, the reference lab, the pharmacy's dispensing system.
EHR = ("EHR", "ALAMO HEALTH")
LAB = ("LIS", "CENTRAL REFERENCE LAB")
PHARMACY = ("RXSYS", "SPECIALTY RX")


def _zone(name: str, hours: int) -> tzinfo:
    """An IANA zone, or its standard offset where the system has no time zone database."""
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        return timezone(timedelta(hours=hours))


CENTRAL = _zone("America/Chicago", -6)
PACIFIC = _zone("America/Los_Angeles", -8)


def npi(base: str) -> str:
    """A ten-digit NPI: nine digits and the Luhn check digit over "80840" + them (CMS's rule)."""
    digits = [int(c) for c in "80840" + base]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return base + str((10 - total % 10) % 10)


@dataclass(frozen=True, slots=True)
class Pharmacist:
    key: str
    given: str
    family: str
    npi: str
    languages: tuple[str, ...]  # BCP-47, the first the one the pharmacist speaks best
    licences: tuple[tuple[str, str], ...]  # (USPS state, licence number)
    drug_classes: tuple[str, ...]
    capacity: int

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"

    def practitioner(self) -> JSON:
        return {
            "resourceType": "Practitioner",
            "identifier": [{"system": NPI_SYSTEM, "value": self.npi}],
            "active": True,
            "name": [{"use": "official", "family": self.family, "given": [self.given], "prefix": ["PharmD"]}],
            "communication": [
                {"coding": [{"system": BCP47_SYSTEM, "code": code}]} for code in self.languages
            ],
            "qualification": [_licence(state, number) for state, number in self.licences],
        }

    def role(self, practitioner_id: str) -> JSON:
        return {
            "resourceType": "PractitionerRole",
            "identifier": [{"system": STAFF_SYSTEM, "value": f"{self.key}-pharmacist"}],
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner_id}", "display": self.name},
            "code": [{"coding": [PHARMACIST_ROLE]}],
            "specialty": [
                {"coding": [{"system": DRUG_CLASS_SYSTEM, "code": cls}], "text": cls}
                for cls in self.drug_classes
            ],
            "extension": [{"url": CASELOAD_CAPACITY, "valueInteger": self.capacity}],
        }


def _licence(state: str, number: str) -> JSON:
    """A state pharmacist licence as a Plan-Net practitioner-qualification."""
    return {
        "identifier": [{"system": f"{STAFF_SYSTEM}/licence/{state.lower()}", "value": number}],
        "code": {
            "coding": [{"system": QUALIFICATION_CODES, "code": "RPH", "display": "Registered Pharmacist"}],
            "text": f"Pharmacist licence ({state})",
        },
        "extension": [
            {
                "url": PLAN_NET_QUALIFICATION,
                "extension": [
                    {"url": "status", "valueCode": "active"},
                    {
                        "url": "whereValid",
                        "valueCodeableConcept": {"coding": [{"system": USPS_SYSTEM, "code": state}]},
                    },
                ],
            }
        ],
    }


@dataclass(frozen=True, slots=True)
class Prescriber:
    given: str
    family: str
    npi: str
    specialty: str

    def practitioner(self) -> JSON:
        return {
            "resourceType": "Practitioner",
            "identifier": [{"system": NPI_SYSTEM, "value": self.npi}],
            "active": True,
            "name": [{"use": "official", "family": self.family, "given": [self.given], "prefix": ["Dr."]}],
            "qualification": [{"code": {"text": self.specialty}}],
        }

    def xcn(self) -> str:
        """ORC-12 (ordering provider): id, family, given, ..., assigning authority as a URI (HD-2/HD-3)."""
        return f"{self.npi}^{self.family}^{self.given}^^^^^^NPI&{NPI_SYSTEM}&URI"


@dataclass(frozen=True, slots=True)
class Person:
    """A patient: how the EHR knows them (MRN under its authority) and what matching reads."""

    mrn: str
    mrn_authority: str  # HD-1 of PID-3.4: the EHR's name for its MRN namespace
    mrn_oid: str
    given: tuple[str, ...]
    family: str
    birth_date: str  # YYYY-MM-DD
    sex: str  # FHIR gender
    line: str
    city: str
    state: str
    postal_code: str
    language: str  # BCP-47
    language_name: str
    zone: tzinfo

    @property
    def name(self) -> str:
        return " ".join((*self.given, self.family))

    @property
    def identifier(self) -> JSON:
        return {"system": f"urn:oid:{self.mrn_oid}", "value": self.mrn}

    def patient(self) -> JSON:
        return {
            "resourceType": "Patient",
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    **self.identifier,
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": self.family, "given": list(self.given)}],
            "gender": self.sex,
            "birthDate": self.birth_date,
            "address": [
                {
                    "use": "home",
                    "line": [self.line],
                    "city": self.city,
                    "state": self.state,
                    "postalCode": self.postal_code,
                    "country": "USA",
                }
            ],
            "communication": [
                {
                    "language": {
                        "coding": [
                            {"system": BCP47_SYSTEM, "code": self.language, "display": self.language_name}
                        ]
                    },
                    "preferred": True,
                }
            ],
        }

    def pid(self) -> str:
        sex = {"female": "F", "male": "M"}.get(self.sex, "U")
        given = "^".join(self.given)
        address = f"{self.line}^^{self.city}^{self.state}^{self.postal_code}^USA^H"
        authority = f"{self.mrn_authority}&{self.mrn_oid}&ISO"
        return (
            f"PID|1||{self.mrn}^^^{authority}^MR||{self.family}^{given}^^^^^L||"
            f"{self.birth_date.replace('-', '')}|{sex}|||{address}"
        )


def hl7_time(moment: datetime) -> str:
    """An HL7 v2 DTM with its offset: 20250301083000-0600."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def fhir_time(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Lab:
    """One lab result the reference lab reports."""

    key: str
    person: Person
    collected: datetime
    code: str
    name: str
    value: str
    unit: str
    range_: str
    flag: str  # HL7 table 0078: N, L, H
    panel: tuple[str, str]  # OBR-4: LOINC code and name


@dataclass(frozen=True, slots=True)
class Fill:
    number: int
    handed_over: datetime
    quantity: int


class Story:
    """The story of one run. `run` is a short suffix unique to the run; `now` fixes every date."""

    def __init__(self, run: str, now: datetime) -> None:
        self.run = run
        self.now = now
        self.pharmacists = (
            Pharmacist(
                "hernandez",
                "Lucía",
                "Hernández",
                npi("176450023"),
                ("es", "en"),
                (("TX", "58213"),),
                ("antipsychotic",),
                40,
            ),
            Pharmacist(
                "walsh",
                "Megan",
                "Walsh",
                npi("143987110"),
                ("en",),
                (("TX", "61077"),),
                ("antipsychotic", "dmard"),
                40,
            ),
            Pharmacist(
                "kim", "Andrew", "Kim", npi("165230987"), ("en",), (("CA", "RPH 79412"),), ("dmard",), 40
            ),
        )
        self.psychiatrist = Prescriber("Daniel", "Okafor", npi("138205471"), "Psychiatry")
        self.rheumatologist = Prescriber("Priya", "Raman", npi("150916384"), "Rheumatology")
        self.insurer_npi = npi("188340652")
        self.maria = Person(
            f"DEMO-{run}-1",
            "ALAMO",
            TX_MRN_OID,
            ("Maria", "Elena"),
            "Reyes",
            "1978-04-12",
            "female",
            "1200 Calle Obispo",
            "San Antonio",
            "TX",
            "78207",
            "es",
            "Spanish",
            CENTRAL,
        )
        self.james = Person(
            f"DEMO-{run}-2",
            "DELTARHEUM",
            CA_MRN_OID,
            ("James",),
            "Whitaker",
            "1969-09-23",
            "male",
            "415 P Street",
            "Sacramento",
            "CA",
            "95814",
            "en",
            "English",
            PACIFIC,
        )
        # Therapy dates: clozapine started three weeks and a day ago (weekly ANCs, the last one yesterday);
        # leflunomide the day before yesterday, after a baseline ALT the day before.
        self.clozapine_start = self._at(CENTRAL, -22, 9, 0)
        self.clozapine_placer = f"RX{run}C"
        self.fills = (Fill(1, self._at(CENTRAL, -21, 10, 15), 28), Fill(2, self._at(CENTRAL, -4, 16, 40), 28))
        self.ancs = tuple(
            Lab(
                f"anc-{n}",
                self.maria,
                self._at(CENTRAL, days, 7, 30),
                "751-8",
                "Neutrophils [#/volume] in Blood by Automated count",
                value,
                "10*3/uL",
                "1.5-8.0",
                flag,
                ("57021-8", "CBC W Auto Differential panel - Blood"),
            )
            for n, (days, value, flag) in enumerate(
                ((-15, "2.1", "N"), (-8, "1.6", "N"), (-1, "1.2", "L")), 1
            )
        )
        self.leflunomide_start = self._at(PACIFIC, -2, 11, 0)
        self.alt = Lab(
            "alt-1",
            self.james,
            self._at(PACIFIC, -3, 8, 10),
            "1742-6",
            "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "24",
            "U/L",
            "7-56",
            "N",
            ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma"),
        )

    def _at(self, zone: tzinfo, days: int, hour: int, minute: int) -> datetime:
        day = (self.now.astimezone(zone) + timedelta(days=days)).date()
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)

    # -- the payer and the prescribers ---------------------------------------------------------------

    def insurer(self, identifier: tuple[str, str] | None = None) -> JSON:
        system, value = identifier or (NPI_SYSTEM, self.insurer_npi)
        return {
            "resourceType": "Organization",
            "identifier": [{"system": system, "value": value}],
            "active": True,
            "type": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "pay"}
                    ]
                }
            ],
            "name": "Bluebonnet Health Plan (demo)",
        }

    def coverage(self, person: Person, patient_id: str, insurer_id: str, member: str) -> JSON:
        return {
            "resourceType": "Coverage",
            "identifier": [{"system": MEMBER_SYSTEM, "value": f"BHP{self.run}{member}"}],
            "status": "active",
            "subscriberId": f"BHP{self.run}{member}",
            "beneficiary": {"reference": f"Patient/{patient_id}", "display": person.name},
            "relationship": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                        "code": "self",
                    }
                ]
            },
            "period": {"start": self.now.date().replace(month=1, day=1).isoformat()},
            "payor": [{"reference": f"Organization/{insurer_id}"}],
        }

    # -- HL7 v2 ------------------------------------------------------------------------------------

    def _msh(self, sender: tuple[str, str], event: str, structure: str, control: str, when: datetime) -> str:
        return (
            f"MSH|^~\\&|{sender[0]}|{sender[1]}|GATEWAY|SPECIALTY RX|{hl7_time(when)}||"
            f"{event}^{structure}|{control}|P|2.5.1"
        )

    def _order_segments(self) -> list[str]:
        start = hl7_time(self.clozapine_start)
        return [
            "RXE||2626^clozapine^RXNORM|100||mg^milligram^UCUM|TAB^Tablet^HL70292|"
            "^Take one 100 mg tablet by mouth twice daily|||28|TAB^tablet^UCUM|3",
            f"TQ1|1||BID||||{start}",
            "RXR|PO^Oral^HL70162",
        ]

    def clozapine_order(self) -> str:
        """RDE^O11: the psychiatrist's clozapine order, pharmacist-verified (RXE)."""
        segments = [
            self._msh(EHR, "RDE^O11", "RDE_O11", f"D{self.run}RDE1", self.clozapine_start),
            self.maria.pid(),
            f"ORC|NW|{self.clozapine_placer}^EHR|||||||{hl7_time(self.clozapine_start)}|||"
            + self.psychiatrist.xcn(),
            *self._order_segments(),
        ]
        return "\r".join(segments) + "\r"

    def dispense(self, fill: Fill) -> str:
        """RDS^O13: one fill of the clozapine order (the order segments as verified, then RXD)."""
        segments = [
            self._msh(PHARMACY, "RDS^O13", "RDS_O13", f"D{self.run}RDS{fill.number}", fill.handed_over),
            self.maria.pid(),
            f"ORC|RE|{self.clozapine_placer}^EHR|||||||{hl7_time(self.clozapine_start)}|||"
            + self.psychiatrist.xcn(),
            *self._order_segments(),
            f"RXD|{fill.number}|2626^clozapine^RXNORM|{hl7_time(fill.handed_over)}|{fill.quantity}|"
            f"TAB^tablet^UCUM|TAB^Tablet^HL70292|{self.clozapine_placer}|{3 - fill.number}",
            "RXR|PO^Oral^HL70162",
        ]
        return "\r".join(segments) + "\r"

    def result(self, lab: Lab) -> str:
        """ORU^R01: one result, reported an hour and a half after collection."""
        collected = hl7_time(lab.collected)
        reported = lab.collected + timedelta(hours=1, minutes=30)
        accession = f"A{self.run}{lab.key.replace('-', '').upper()}"
        placer = f"L{self.run}{lab.key.replace('-', '').upper()}"
        segments = [
            self._msh(LAB, "ORU^R01", "ORU_R01", f"D{self.run}{lab.key.upper()}", reported),
            lab.person.pid(),
            f"ORC|RE|{placer}^EHR|{accession}^LIS",
            f"OBR|1|{placer}^EHR|{accession}^LIS|{lab.panel[0]}^{lab.panel[1]}^LN|||{collected}"
            f"|||||||||||||||{hl7_time(reported)}|||F",
            f"OBX|1|NM|{lab.code}^{lab.name}^LN||{lab.value}|{lab.unit}^^UCUM|{lab.range_}|{lab.flag}|||F"
            f"|||{collected}",
        ]
        return "\r".join(segments) + "\r"

    # -- FHIR --------------------------------------------------------------------------------------

    def leflunomide_order(self, patient_id: str, prescriber_id: str) -> JSON:
        """The rheumatologist's EHR writes this over the FHIR API."""
        return {
            "resourceType": "MedicationRequest",
            "identifier": [{"system": CA_ORDER_SYSTEM, "value": f"RX{self.run}L"}],
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "27169", "display": "leflunomide"}],
                "text": "leflunomide 20 mg oral tablet",
            },
            "subject": {"reference": f"Patient/{patient_id}", "display": self.james.name},
            "authoredOn": fhir_time(self.leflunomide_start),
            "requester": {"reference": f"Practitioner/{prescriber_id}", "display": "Dr. Priya Raman"},
            "dosageInstruction": [
                {
                    "text": "Take one 20 mg tablet by mouth once daily",
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "route": {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
                    "doseAndRate": [
                        {"doseQuantity": {"value": 20, "unit": "mg", "system": UCUM, "code": "mg"}}
                    ],
                }
            ],
            "dispenseRequest": {
                "numberOfRepeatsAllowed": 5,
                "quantity": {"value": 30, "unit": "tablet"},
                "expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"},
            },
        }

    def prior_auth_parameters(self, coverage_id: str, anc_id: str | None) -> JSON:
        parameters: list[JSON] = [
            {"name": "coverage", "valueReference": {"reference": f"Coverage/{coverage_id}"}}
        ]
        if anc_id:
            parameters.append(
                {"name": "supportingInfo", "valueReference": {"reference": f"Observation/{anc_id}"}}
            )
        return {"resourceType": "Parameters", "parameter": parameters}

    def intervention(
        self, patient_id: str, role_id: str, order_id: str, alert_id: str | None, sent: datetime
    ) -> JSON:
        """The pharmacist's call to the patient about the low ANC (a Communication, README "Pharmacist
        interventions")."""
        about = [{"reference": f"MedicationRequest/{order_id}"}]
        if alert_id:
            about.insert(0, {"reference": f"Task/{alert_id}"})
        return {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"coding": [{"system": INTERVENTION_TYPE, "code": "call"}]}],
            "subject": {"reference": f"Patient/{patient_id}"},
            "about": about,
            "basedOn": [{"reference": f"MedicationRequest/{order_id}"}],
            "sent": sent.isoformat(timespec="milliseconds"),
            "sender": {"reference": f"PractitionerRole/{role_id}"},
            "recipient": [{"reference": f"Patient/{patient_id}"}],
            "payload": [
                {
                    "contentString": "Called the patient in Spanish: ANC 1.2 x10^3/uL (mild neutropenia). "
                    "Continue clozapine; ANC three times a week until it is back at or above 1.5; "
                    "went over fever and sore throat as reasons to call at once."
                }
            ],
            "extension": [
                {
                    "url": INTERVENTION_OUTCOME,
                    "valueCodeableConcept": {
                        "text": "patient agreed to ANC draws Monday, Wednesday and Friday"
                    },
                }
            ],
        }
