"""The HTTP door's guard: who may use it and what it will read (shared/intake-api.md,
"Limits", "Cross-site and proxies", "Access", "Tenants"), one concern per module:

- `keys`: `API_KEYS` parsed (`key:scopes@tenant`, `sha256:` entries), fingerprints, checks;
- `scopes`: which scopes each route needs;
- `tenants`: which bundles a tenant's key sees;
- `cross_site`: `Host`, `Origin`, `Content-Type`;
- `proxies`: the client's address behind `TRUSTED_PROXIES`;
- `limits`: body size and `Correlation-ID`;
- `door`: the middleware that applies them, in that order, to every request.
"""

from vip_bundles.guard.door import DoorGuard, GuardConfig

__all__ = ["DoorGuard", "GuardConfig"]
