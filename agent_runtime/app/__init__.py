"""The application: configuration, the table of roles, process wiring, CLI, HTTP and
`doctor`. It imports everything below it (`actors`, `backend`, the ground utilities in
`agent_runtime`); nothing below imports it."""
