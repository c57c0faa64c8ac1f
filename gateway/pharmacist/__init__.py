"""The remote pharmacist's capability, pure logic: adherence (PDC), monitoring schedules, pharmacist
matching and worklist ranking. No I/O here; the use cases that read and write the store live in
`gateway.service`."""
