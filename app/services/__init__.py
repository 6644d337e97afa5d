"""Business logic, one module per resource; no HTTP types here."""
