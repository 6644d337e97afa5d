"""API contracts (request and response bodies)."""
