"""`gateway ingest`: files of HL7 v2 messages through the same pipeline as the network listeners, and
payers' files (X12 278 responses, CSV status files) through the prior-authorization service."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.hl7v2.er7 import split_batch
from gateway.adapters.payer.csv_status import looks_like_status_csv
from gateway.adapters.payer.x12_278 import looks_like_x12
from gateway.exceptions import FhirError
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Lane, Result, Source, decode
from gateway.service.priorauth.operations import PayerFileReport

# Messages in flight at once: enough to fill the committer's batches; order is kept (see pipeline.py).
IN_FLIGHT = 256


@dataclass
class Summary:
    files: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # "file #n: AE: text"
    payer_lines: list[str] = field(default_factory=list)  # what each payer file did

    @property
    def messages(self) -> int:
        return sum(self.counts[k] for k in ("AA", "AE", "AR", "duplicate"))

    @property
    def failed(self) -> bool:
        return bool(self.counts["AE"] or self.counts["AR"] or self.counts["payer-refused"])

    def report(self) -> str:
        rate = self.messages / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.messages} messages from {self.files} file(s) in {self.seconds:.1f}s ({rate:.0f}/s):"
            f" {self.counts['AA']} accepted, {self.counts['duplicate']} duplicates,"
            f" {self.counts['AE']} errors, {self.counts['AR']} rejected",
            *self.failures[:20],
        ]
        if self.payer_lines:
            lines[0:0] = self.payer_lines
        if len(self.failures) > 20:
            lines.append(f"... and {len(self.failures) - 20} more (see GET /hl7v2/messages?status=error)")
        return "\n".join(lines)


def _record(summary: Summary, where: str, result: Result) -> None:
    summary.counts["duplicate" if result.duplicate else result.code] += 1
    if result.code != "AA":
        summary.failures.append(
            f"{where}: {result.code}: {'; '.join(result.errors)[:300]} (log {result.log_id})"
        )


async def ingest_files(
    gateway: Gateway, paths: Sequence[Path], source_name: str, progress: Callable[..., Any]
) -> Summary:
    summary = Summary(files=len(paths))
    texts = [(path, decode(path.read_bytes())) for path in paths]
    for path, text in texts:
        if looks_like_x12(text) or looks_like_status_csv(text):
            await _payer_file(gateway, summary, path, text, source_name)
    batches = [
        (path, split_batch(text))
        for path, text in texts
        if not (looks_like_x12(text) or looks_like_status_csv(text))
    ]
    total = sum(len(messages) for _, messages in batches)
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    with progress(length=total, label="ingesting", file=None) as bar:

        async def one(where: str, text: str, detail: str, lane: Lane) -> None:
            result = await gateway.pipeline.submit(text, Source(source_name, detail), lane=lane)
            _record(summary, where, result)
            bar.update(1)

        for path, messages in batches:
            lane = Lane()  # prepared concurrently (big ones in worker processes), queued in file order
            for number, text in enumerate(messages, start=1):
                # Tasks start in creation order, and each joins the lane before its first await.
                task = asyncio.create_task(one(f"{path.name} #{number}", text, path.name, lane))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if len(pending) >= IN_FLIGHT:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.gather(*pending)
    summary.seconds = time.perf_counter() - started
    return summary


async def _payer_file(gateway: Gateway, summary: Summary, path: Path, text: str, source_name: str) -> None:
    """A payer's file is applied whole (X12) or row by row (CSV, bad rows listed); never half an X12."""
    report: PayerFileReport | None = None
    try:
        report = await gateway.pa_ops.payer_file(text)
    except FhirError as exc:
        summary.counts["payer-refused"] += 1
        summary.failures.append(f"{path.name}: refused, nothing changed: {exc}")
        return
    finally:
        gateway.audit.payer_file(  # for the audit trail: refused (None), or the Tasks it moved
            source_name, path.name, [a.task_id for a in report.applied] if report else None
        )
    summary.payer_lines += [f"{path.name}: {report.lines()[0]}", *report.lines()[1:]]
    if report.problems:
        summary.counts["payer-refused"] += 1


async def reprocess(gateway: Gateway, ids: Sequence[str]) -> Summary:
    from gateway.store import messages as message_log

    summary = Summary()
    started = time.perf_counter()
    for log_id in ids:
        async with gateway.db.read() as conn:
            row = await message_log.get(conn, log_id)
        if row is None:
            summary.failures.append(f"{log_id}: no such message in the log")
            summary.counts["AR"] += 1
            continue
        result = await gateway.pipeline.submit(
            row.raw, Source("reprocess", f"log:{log_id}"), reprocess_id=log_id
        )
        _record(summary, f"log {log_id}", result)
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["Summary", "ingest_files", "reprocess"]
