"""The resource kit: what every tenant-scoped resource needs, written once.

- `scope`: `OwnerScope`, the tenant/owner filter, and `ScopeDep` for handlers;
- `paging`: keyset pagination with signed cursors over whitelisted sorts;
- `cache`: a versioned read-through cache, written through after commit;
- `versioning`: conditional (`If-Match`) updates in one statement;
- `store`: `ScopedStore`, the above combined for one `ScopedTable`.

These know SQLModel tables, so they live here rather than in `app/core`
(infrastructure that knows no model). `make resource name=...` writes a new resource
on them.
"""

from app.resources.paging import PageResult, Sorts
from app.resources.scope import OwnerScope, ScopeDep
from app.resources.store import ScopedStore

__all__ = ["OwnerScope", "PageResult", "ScopeDep", "ScopedStore", "Sorts"]
