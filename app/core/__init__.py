"""Infrastructure: configuration, database, cache, errors, middleware, logging, security."""
