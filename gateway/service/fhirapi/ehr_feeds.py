"""EHRs that push FHIR: the clients with a mapping file (`mappings/fhir/clients/`) get what an HL7 v2 sender
gets from its site file (gateway/mapping/fhir_clients.py).

- Their local codes become standard ones before the resource is validated, indexed and matched.
- What they write is tagged with their feed and has a Provenance naming them (agent: the client).
- A lab result they push that is already stored (the same result from the lab over HL7 v2, or a re-push)
  is not stored twice: the stored Observation takes the pushed one's identifiers and tag, and the client
  is answered with it (200). The HL7 v2 pipeline does the same the other way round (`twin_of`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.fhir import results
from gateway.exceptions import Unprocessable
from gateway.fhir import dates, jsonio
from gateway.fhir.audit import AGENT_SYSTEMS
from gateway.fhir.query import QueryParser
from gateway.mapping.codes import apply_code_rules
from gateway.mapping.fhir_clients import FhirClientMapping
from gateway.store import clients as client_store
from gateway.store import resources as resources_store
from gateway.store import search as store_search
from gateway.store.resources import Stored
from gateway.types import JSON

MAX_CANDIDATES = 50  # results of one code for one patient at one time: more is not a twin question
MERGING_CHECK_S = 30.0  # how stale "is an EHR feed client registered" may be
CLIENT_CACHE_SIZE = 1000


class EhrFeeds:
    def __init__(
        self, mappings: dict[str, FhirClientMapping], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.mappings = mappings
        self.clock = clock
        self._names: dict[str, str | None] = {}  # client id -> registered name (None: no such client)
        self._merging_at = -math.inf
        self._merging = False

    async def merging(self, conn: AsyncConnection) -> bool:
        """Whether a client whose results are matched is registered (read at most every MERGING_CHECK_S):
        the HL7 v2 pipeline looks for twins only then, so a gateway without such a feed pays nothing."""
        names = [name for name, m in self.mappings.items() if m.merge_results]
        if not names:
            return False
        if self.clock() - self._merging_at >= MERGING_CHECK_S:
            self._merging = await client_store.any_named(conn, names)
            self._merging_at = self.clock()
        return self._merging

    async def mapping_for(self, conn: AsyncConnection, client_id: str | None) -> FhirClientMapping | None:
        if not client_id or not self.mappings:
            return None
        if client_id not in self._names:
            record = await client_store.get_client(conn, client_id)
            if len(self._names) >= CLIENT_CACHE_SIZE:
                self._names.clear()
            self._names[client_id] = record.name if record is not None else None
        name = self._names[client_id]
        mapping = self.mappings.get(name) if name is not None else None
        if mapping is not None and mapping.merge_results:
            # a feed that merges is writing: from now on the HL7 v2 pipeline looks for twins
            self._merging, self._merging_at = True, self.clock()
        return mapping

    @staticmethod
    def normalize(mapping: FhirClientMapping, resource: JSON) -> list[str]:
        """Local codes to standard ones, and the feed's tag; what was replaced, for the caller to report."""
        done = apply_code_rules(resource, mapping.codes)
        meta = dict(resource.get("meta") or {})
        tag = results.feed_tag(mapping.client)
        if tag not in (meta.get("tag") or []):
            meta["tag"] = [*(meta.get("tag") or []), tag]
        resource["meta"] = meta
        return done

    async def twin_of(
        self, conn: AsyncConnection, resource: JSON, local_bases: tuple[str, ...], *, from_feed_only: bool
    ) -> Stored | None:
        """The one stored Observation that is the same result as `resource` (None when there is none, or
        more than one: then nothing is merged). `from_feed_only`: only EHR-pushed candidates."""
        key = results.result_key(resource, local_bases)
        if key is None:
            return None
        codes = ",".join(sorted(f"{system}|{code}" for system, code in key.codes))
        parser = QueryParser(default_count=MAX_CANDIDATES, max_count=MAX_CANDIDATES, local_bases=local_bases)
        query = parser.parse(
            "Observation",
            [("patient", f"Patient/{key.patient}"), ("code", codes), ("_count", str(MAX_CANDIDATES))],
        )
        found, _ = await store_search.search(conn, query)
        twins = []
        for stored in found:
            if stored.content is None or stored.deleted or stored.id == resource.get("id"):
                continue
            content = jsonio.loads(stored.content)
            if from_feed_only and not results.from_ehr_feed(content):
                continue
            other = results.result_key(content, local_bases)
            if other is not None and results.same_result(key, other):
                twins.append(stored)
        return twins[0] if len(twins) == 1 else None

    async def same_patient(self, conn: AsyncConnection, patient: JSON) -> Stored | None:
        """The stored Patient that carries one of this Patient's identifiers (system and value), when
        exactly one does: the person the EHR means, whoever registered them first (HL7 v2 or FHIR)."""
        keys = [
            (str(i["system"]), str(i["value"]))
            for i in patient.get("identifier") or []
            if isinstance(i, dict) and i.get("system") and i.get("value")
        ]
        if not keys:
            return None
        found = await store_search.all_ids_by_identifier(conn, "Patient", keys)
        ids = sorted({pid for pids in found.values() for pid in pids})
        if len(ids) != 1:
            return None  # none, or identifiers that name two stored Patients: not the gateway's guess
        stored = await resources_store.current(conn, "Patient", ids[0])
        return stored if stored is not None and not stored.deleted and stored.content is not None else None

    async def resolve_subject(self, conn: AsyncConnection, resource: JSON) -> None:
        """A `subject`/`patient` that names the Patient only by identifier (a logical reference) becomes a
        reference to the stored Patient with that identifier; an identifier no stored Patient carries is
        refused (422), naming the element: the gateway does not file a result under nobody."""
        for element in ("subject", "patient", "for", "beneficiary"):
            value = resource.get(element)
            if (
                not isinstance(value, dict)
                or value.get("reference")
                or not isinstance(value.get("identifier"), dict)
            ):
                continue
            ident = value["identifier"]
            stored = await self.same_patient(conn, {"identifier": [ident]})
            if stored is None:
                raise Unprocessable(
                    f"No Patient here carries the identifier {ident.get('system')}|{ident.get('value')}"
                    " (or more than one does): send the Patient first, or reference it",
                    expression=f"{resource.get('resourceType')}.{element}.identifier",
                )
            resource[element] = {**value, "reference": f"Patient/{stored.id}"}

    @staticmethod
    def provenance(mapping: FhirClientMapping, client_id: str, targets: list[str], activity: str) -> JSON:
        """A Provenance naming the EHR client as the author of what it wrote (targets: Type/id/_history/n)."""
        return {
            "resourceType": "Provenance",
            "target": [{"reference": t} for t in targets],
            "recorded": dates.format_instant(dates.now_us()),
            "activity": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": {
                        "identifier": {"system": AGENT_SYSTEMS["client"], "value": client_id},
                        "display": f"EHR over FHIR: {mapping.client}",
                    },
                }
            ],
        }
