"""Prior authorization, pure: payer decisions, the PA Task lifecycle, request assembly, deadlines.

Nothing here does I/O; the service layer (`gateway.service.priorauth`) reads and writes through the
store and talks to payers.
"""
