"""The glue between the MLLP listener and the ingest pipeline."""

from __future__ import annotations

from gateway.service.hl7.pipeline import Pipeline, Source
from gateway.transports.mllp.server import Handler, Peer


def pipeline_handler(pipeline: Pipeline) -> Handler:
    """A handler that runs each framed message through the pipeline and answers with its ACK."""

    async def handle(message: bytes, peer: Peer) -> bytes:
        result = await pipeline.submit(message, Source("mllp", str(peer)))
        return result.ack.encode("utf-8")

    return handle
