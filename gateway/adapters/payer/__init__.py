"""Payer feeds in: PAS, X12 278 and CSV status files, each into gateway.pa.decision.PayerDecision."""
