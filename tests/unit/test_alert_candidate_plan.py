"""The alert-candidate lookups are answered from the partial indexes, never by scanning the table: a scan
grows with every alert ever opened (the soak found one: 100 ms a batch at 12,000 messages)."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from gateway.store.alerts import LabKey, lookups
from gateway.store.tables import alert_candidate


def _plans(keys: list[LabKey], by_rule: dict[str, set[str]], lab_rules: set[str]) -> list[str]:
    engine = create_engine("sqlite://")
    alert_candidate.create(engine)
    plans = []
    with engine.connect() as conn:
        # Enough rows that a scan is not the cheap choice the planner makes for a table it knows is tiny.
        conn.execute(
            alert_candidate.insert(),
            [
                {
                    "task_id": f"alert-{n}",
                    "patient": f"Patient/p{n % 500}",
                    "rule": "abnormal-result" if n % 3 else "clozapine-anc",
                    "lab_system": "http://loinc.org",
                    "lab_code": f"{n % 7}-1",
                    "live": n % 2 == 0,
                }
                for n in range(5000)
            ],
        )
        conn.execute(text("ANALYZE"))
        for sql, values in lookups("sqlite", by_lab=keys, by_rule=by_rule, lab_rules=lab_rules):
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", tuple(values)).all()
            plans.append("\n".join(str(row[-1]) for row in rows))
    return plans


def test_lab_and_rule_lookups_use_the_partial_indexes() -> None:
    keys = [
        LabKey(f"Patient/p{n}", "http://loinc.org", f"{n % 7}-1", frozenset({"abnormal-result"}))
        for n in range(40)
    ]
    keys.append(LabKey("Patient/p1", None, "local-1", frozenset()))
    plans = _plans(
        keys, {"Patient/p1": {"clozapine-anc"}, "Patient/p2": {"clozapine-anc"}}, {"clozapine-anc"}
    )
    assert plans
    for plan in plans:
        assert "SCAN alert_candidate" not in plan, plan
        assert "ix_alert_candidate_lab" in plan and "ix_alert_candidate_rule" in plan, plan


def test_many_keys_are_split_into_statements_sqlite_accepts() -> None:
    keys = [LabKey(f"Patient/p{n}", "http://loinc.org", "1-1", frozenset()) for n in range(450)]
    statements = lookups("sqlite", by_lab=keys, by_rule={}, lab_rules=set())
    assert len(statements) == 5  # 100 SELECTs at most in one UNION ALL
    assert sum(sql.count("SELECT") for sql, _ in statements) == 450
