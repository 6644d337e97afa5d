"""Optional integrations, one package per extra (storage, ...): the small interface the
app depends on and its adapters, each importing its extra only when configured."""
