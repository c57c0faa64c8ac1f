"""Prior authorization: PAS requests to payers, their answers as PA Task states, timers and tracking."""
