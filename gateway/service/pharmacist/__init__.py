"""The remote pharmacist's use cases: the patient stream ($everything, $timeline), pharmacist matching and
care teams, alerts as work, the worklist and metrics. Pure logic lives in `gateway.pharmacist`."""
