"""Staff accounts, roles and permissions, access tokens and API keys (SPEC O1, O4).

Every API route depends on `deps.require(permission)`; store-scoped roles carry the set of store ids
they may read, and member queries are narrowed by `members.scope.readable`.
"""
