"""The assembled gateway: database, validator, FHIR service and auth, started and stopped together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.adapters.hl7v2.translate import Translator
from gateway.ehr.upstreams import load_upstreams
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.query import SearchLimits
from gateway.fhir.validation import Validator
from gateway.mapping import files as mapping_files
from gateway.mapping.fhir_clients import load_fhir_clients
from gateway.mapping.files import MappingSet
from gateway.mapping.monitoring import load_monitoring
from gateway.pa.coverage import load_coverage_rules
from gateway.pa.decision import REVIEW_REASON_TABLE
from gateway.pa.payers import load_payers
from gateway.routing.endpoints import Allowlist
from gateway.routing.evaluators import EVALUATORS
from gateway.routing.topics import TopicSet
from gateway.service.access.clients import AuthService, key_encryption_from
from gateway.service.access.launch import LaunchService
from gateway.service.access.logins import LoginService
from gateway.service.access.people import People
from gateway.service.bulkexport.exports import BulkExports
from gateway.service.ehrpull.deletions import following_deletions
from gateway.service.ehrpull.forwarding import Forwarding
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.ehrpull.subscriber import SECRET_LABEL, EhrSubscriber
from gateway.service.fhirapi.audit import AuditLog
from gateway.service.fhirapi.bundles import BundleProcessor
from gateway.service.fhirapi.ehr_feeds import EhrFeeds
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.hl7.pipeline import Pipeline, limits_of, warm_worker
from gateway.service.pharmacist.alerts import AlertService
from gateway.service.pharmacist.matching import PharmacistMatching
from gateway.service.pharmacist.monitoring import MonitoringCalendar
from gateway.service.pharmacist.timeline import PatientTimeline
from gateway.service.pharmacist.timeline_stream import EVENT_ID_LABEL, EventIds, TimelineFeed
from gateway.service.priorauth import tracking as pa_tracking
from gateway.service.priorauth.coverage import CoverageChecks
from gateway.service.priorauth.operations import PriorAuthOps
from gateway.service.priorauth.payer_client import PayerClient
from gateway.service.priorauth.requests import PriorAuthService
from gateway.service.priorauth.worker import PayerWorker
from gateway.service.subscriptions.delivery import Deliverer
from gateway.service.subscriptions.manager import SubscriptionManager, SubscriptionPolicy
from gateway.service.subscriptions.operations import SubscriptionOps
from gateway.service.workers import WorkerPool
from gateway.settings import Settings
from gateway.store import migrate
from gateway.store.database import Database
from gateway.store.maintenance import StatisticsKeeper

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    settings: Settings
    db: Database
    profiles: ProfileSet
    fhir: FhirService
    bundles: BundleProcessor
    auth: AuthService
    mappings: MappingSet
    pipeline: Pipeline
    subscriptions: SubscriptionManager
    deliverer: Deliverer
    subscription_ops: SubscriptionOps
    priorauth: PriorAuthService
    payer_worker: PayerWorker
    pa_ops: PriorAuthOps
    workers: WorkerPool  # CPU-heavy parsing off the event loop (service/workers.py)
    audit: AuditLog
    monitoring: MonitoringCalendar
    timeline_feed: TimelineFeed  # the live patient timeline: change log and open streams
    logins: LoginService  # people's logins and console sessions
    launch: LaunchService  # SMART standalone launch: codes, consent, user tokens
    people: People  # what a person (console session, user token) reaches
    puller: EhrPuller  # pulls from upstream EHRs' FHIR APIs (none configured: does nothing)
    coverage: CoverageChecks  # payers' coverage rules: PA Tasks on order arrival, CDS Hooks order-sign
    exports: BulkExports  # Bulk Data $export served here: jobs and their builder
    subscriber: EhrSubscriber  # subscriptions on upstream EHRs that offer a topic (else they are polled)

    @classmethod
    async def start(cls, settings: Settings, *, run_migrations: bool = True) -> Gateway:
        # A bad payers file, mapping file or time zone fails the start before the database is touched.
        payers = load_payers(settings.payers_file)
        upstreams = load_upstreams(settings.upstreams_file)
        mappings = mapping_files.load(settings.mappings_dir)
        ehr_clients = load_fhir_clients(settings.mappings_dir / "fhir" / "clients")
        monitoring_rules = load_monitoring(settings.mappings_dir)
        coverage_rules = load_coverage_rules(
            settings.mappings_dir / "coverage",
            frozenset(r.drug_class for r in monitoring_rules.drug_lab if r.drug_class),
        )
        default_zone = mapping_files.default_zone(settings.hl7_default_offset)
        kek = key_encryption_from(settings)  # a malformed key stops the start here too
        db = Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            statement_timeout_s=settings.db_statement_timeout_seconds,
        )
        auth = AuthService.from_settings(db, settings, key_encryption=kek)
        try:
            if run_migrations:
                await migrate.upgrade(db, key_encryption=kek)
            await auth.start()  # signing keys that do not open stop the start here, with the reason
        except BaseException:
            auth.close()
            await db.dispose()
            raise
        statistics = StatisticsKeeper(db)
        db.after_commit.append(statistics.note_commit)
        db.before_dispose.append(statistics.stop)
        if db.dialect == "postgresql":
            await statistics.refresh()  # a database loaded while the gateway was down
        base_url = settings.base_url or f"http://{settings.host}:{settings.port}/fhir"
        audit = AuditLog(db, observer=base_url, retention_days=settings.audit_retention_days)
        profiles = ProfileSet.load(settings.profiles_dir)
        validator = Validator(profiles)
        fhir = FhirService(
            db,
            validator,
            default_count=settings.default_page_size,
            max_count=settings.max_page_size,
            max_included=settings.max_included,
            configured_base=settings.base_url,
            search_limits=SearchLimits(
                max_parameters=settings.search_max_parameters,
                max_values=settings.search_max_values,
                max_total_values=settings.search_max_total_values,
                max_offset=settings.search_max_offset,
            ),
        )
        topics = TopicSet.load(settings.topics_dir or settings.profiles_dir / "topics", frozenset(EVALUATORS))
        # Forwarding to upstreams rides on subscriptions: a topic of its own per upstream.
        forwarding = Forwarding(upstreams, base_url)
        topics = TopicSet((*topics.topics, *forwarding.topics()))
        manager = SubscriptionManager(
            db,
            topics,
            monitoring_rules,
            allowlist=Allowlist.parse(settings.subscription_allowlist),
        )
        fhir.write_observers.append(pa_tracking.observe)  # lifecycle first: a refused move matches nothing
        timeline_feed = TimelineFeed(
            db,
            PatientTimeline(fhir),
            EventIds(kek.derived(EVENT_ID_LABEL)),
            poll_s=settings.timeline_stream_poll_seconds,
            heartbeat_s=settings.timeline_stream_heartbeat_seconds,
            max_total=settings.timeline_stream_max,
            max_per_client=settings.timeline_stream_max_per_client,
        )
        # Before the observers that write (alerts, calendars): a result's entry comes before its alert's.
        fhir.write_observers.append(timeline_feed.observe)
        fhir.write_observers.append(manager.observe)
        # After the topics of the results themselves: an alert's own events follow its result's.
        # A first specialty order assigns the patient's pharmacist before alerts and calendars look for one.
        fhir.write_observers.append(PharmacistMatching(fhir, manager.rules).observe)
        alerts = AlertService(fhir, manager.rules)
        fhir.write_observers.append(alerts.observe)
        monitoring = MonitoringCalendar(fhir, manager.rules, interval_s=settings.monitoring_sweep_seconds)
        fhir.write_observers.append(monitoring.observe)
        fhir.policies["Subscription"] = SubscriptionPolicy(manager)
        fhir.feeds = EhrFeeds(ehr_clients) if ehr_clients else None
        await pa_tracking.backfill(db)
        await manager.reload()
        await forwarding.ensure_subscriptions(fhir)
        deliverer = Deliverer(
            fhir,
            manager,
            base_url=base_url,
            horizon_s=settings.subscription_retry_horizon_seconds,
            poll_s=settings.delivery_poll_seconds,
            audit=audit,
        )
        deliverer.forwarding = forwarding
        priorauth = PriorAuthService(
            fhir, payers, base_url=base_url, reason_displays=mappings.tables.table(REVIEW_REASON_TABLE)
        )
        payer_worker = PayerWorker(
            priorauth,
            PayerClient(),
            manager,
            expiring_days=settings.pa_expiring_days,
            interval_s=settings.pa_worker_seconds,
        )
        # Last observer: a PA Task opened for an order is itself seen by the lifecycle and topic observers.
        coverage = CoverageChecks(fhir, priorauth, payer_worker, coverage_rules, manager.rules)
        fhir.write_observers.append(coverage.observe)
        auth.on_client_revoked.append(deliverer.turn_off_owned)  # a removed client's subscriptions go off
        auth.after_client_revoked.append(deliverer.settle_owner)  # and what was on the wire has landed
        auth.after_client_revoked.append(timeline_feed.client_revoked)  # its open streams end now
        translator = Translator(mappings, default_zone=default_zone)
        puller = following_deletions(EhrPuller(fhir, upstreams))
        pool = WorkerPool(settings, warmers=(warm_worker,))
        pipeline = Pipeline(
            fhir,
            translator,
            validator,
            limits=limits_of(settings),
            pool=pool if settings.workers > 0 else None,
            offload_bytes=settings.hl7_offload_bytes,
            audit=audit,
        )
        log.info(
            "gateway started database=%s profiles=%d hl7v2-messages=%d sites=%d topics=%d subscriptions=%d",
            db.redacted_url(),
            len(profiles.resources()),
            len(mappings.messages),
            len(mappings.sites),
            len(topics.topics),
            len(manager.index),
        )
        return cls(
            settings,
            db,
            profiles,
            fhir,
            BundleProcessor(
                fhir,
                max_entries=settings.bundle_max_entries,
                max_response_bytes=settings.bundle_max_response_bytes,
                pool=pool if settings.workers > 0 else None,
                offload_bytes=settings.json_offload_bytes,
            ),
            auth,
            mappings,
            pipeline,
            manager,
            deliverer,
            SubscriptionOps(manager, deliverer),
            priorauth,
            payer_worker,
            PriorAuthOps(priorauth, payer_worker, pool=pool if settings.workers > 0 else None),
            pool,
            audit,
            monitoring,
            timeline_feed,
            LoginService(
                db,
                cost=settings.password_hash_cost,
                idle_minutes=settings.session_idle_minutes,
                max_hours=settings.session_max_hours,
                max_failures=settings.login_max_failures,
                lockout_max_minutes=settings.login_lockout_max_minutes,
            ),
            LaunchService(db, auth),
            People(db),
            puller,
            coverage,
            BulkExports(
                fhir,
                file_resources=settings.export_file_resources,
                retention_s=int(settings.export_retention_hours * 3600),
            ),
            EhrSubscriber(puller, kek.derived(SECRET_LABEL)[0]),
        )

    async def start_background(self) -> None:
        """Delivery of subscription notifications, the prior-authorization worker, the EHR pull and the audit
        log's retention (what `serve` runs); the audit writer itself starts with the first event anywhere."""
        await self.audit.start()
        await self.deliverer.start()
        await self.payer_worker.start()
        await self.monitoring.start()
        await self.puller.start()
        await self.exports.start()
        await self.subscriber.start()

    async def close(self) -> None:
        await self.timeline_feed.stop()  # open streams end first (`gateway serve` ends them earlier)
        await self.exports.stop()
        await self.subscriber.stop()
        await self.puller.stop()
        await self.monitoring.stop()
        await self.coverage.drain()  # automatic PA submissions under way finish before the worker stops
        await self.payer_worker.stop()
        await self.deliverer.stop()
        if self.deliverer.forwarding is not None:
            await self.deliverer.forwarding.close()
        await self.pipeline.stop()
        self.workers.close()
        self.auth.close()
        await self.audit.stop()  # last: what the others recorded while stopping is written too
        await self.db.dispose()
