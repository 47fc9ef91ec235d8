"""FastAPI dependencies: the request's session (one transaction, committed at the edge) and the
calling principal with a permission check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from orchard.auth.roles import Perm
from orchard.auth.service import Principal, principal_for
from orchard.db import transaction
from orchard.errors import Forbidden, Unauthorized


def get_session(request: Request) -> Iterator[Session]:
    """The request's transaction, committed when the endpoint returns (scope="function"), before
    the response is sent, so a failed commit is the client's error response, not a lost write."""
    with transaction(readonly=request.method in ("GET", "HEAD")) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
_bearer = HTTPBearer(auto_error=False, description="An access token from /api/v1/auth/token, or an API key")


def get_principal(request: Request, session: SessionDep,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if creds is None or not creds.credentials:
        raise Unauthorized("missing credentials: send Authorization: Bearer <token or API key>",
                           code="auth.missing")
    principal = principal_for(session, creds.credentials)
    request.state.principal = principal
    return principal


def require(perm: Perm) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.can(perm):
            raise Forbidden(f"role {principal.role} may not {perm}", code="auth.forbidden")
        return principal

    check.__name__ = f"require_{perm.value.replace(':', '_')}"
    return check


def Actor(perm: Perm):  # noqa: N802 - reads like a type in signatures
    return Annotated[Principal, Depends(require(perm))]
