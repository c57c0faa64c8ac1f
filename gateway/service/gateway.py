"""The assembled gateway: database, validator, FHIR service and auth, started and stopped together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.service.bundles import BundleProcessor
from gateway.service.clients import AuthService
from gateway.service.interactions import FhirService
from gateway.settings import Settings
from gateway.store import migrate
from gateway.store.database import Database

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    settings: Settings
    db: Database
    profiles: ProfileSet
    fhir: FhirService
    bundles: BundleProcessor
    auth: AuthService

    @classmethod
    async def start(cls, settings: Settings, *, run_migrations: bool = True) -> Gateway:
        db = Database(settings.database_url, pool_size=settings.db_pool_size)
        if run_migrations:
            await migrate.upgrade(db)
        profiles = ProfileSet.load(settings.profiles_dir)
        fhir = FhirService(
            db,
            Validator(profiles),
            default_count=settings.default_page_size,
            max_count=settings.max_page_size,
            max_included=settings.max_included,
            configured_base=settings.base_url,
        )
        log.info("gateway started database=%s profiles=%d", db.redacted_url(), len(profiles.resources()))
        return cls(
            settings,
            db,
            profiles,
            fhir,
            BundleProcessor(fhir),
            AuthService(db, token_ttl_seconds=settings.token_ttl_seconds),
        )

    async def close(self) -> None:
        await self.db.dispose()
