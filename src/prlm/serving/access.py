"""Access as FastAPI dependencies: the server state, who is calling, and what their token reaches.

The admin token provisions users and issues their tokens and nothing else; a user token reads and
writes only its own profile and generates only for itself (403 for any other user id in the path,
whether or not that user exists).
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from prlm import PrlmError
from prlm.data.tasks import get_task
from prlm.serving.middleware import client_host
from prlm.serving.schemas import USER_ID_PATTERN, normal_user_id
from prlm.serving.state import Principal, ServerState

bearer = HTTPBearer(auto_error=False, description="The admin token or a user token.")


async def get_state(request: Request) -> ServerState:
    """The app's ServerState (async: read on the event loop, no thread hop per request)."""
    return request.app.state.prlm


def principal(request: Request, _cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    found = getattr(request.state, "principal", None)
    if found is None:  # Authenticate guards every /v1/ route; this is a second lock on the door
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found


def admin(request: Request, p: Principal = Depends(principal)) -> Principal:
    if p.role != "admin":
        _deny(request, p, None, "this needs the admin token")
    return p


def owner(request: Request, user_id: str = PathParam(pattern=USER_ID_PATTERN),
          p: Principal = Depends(principal)) -> str:
    user_id = normal_user_id(user_id)
    if p.role == "admin":
        _deny(request, p, user_id, "the admin token does not read or write profiles; use the user's token")
    if p.user_id != user_id:
        _deny(request, p, user_id, "a user token reaches only its own user id")
    return user_id


def _deny(request: Request, p: Principal, target: str | None, detail: str):
    """403, and a line in the audit log: who tried to reach what."""
    state: ServerState = request.app.state.prlm
    state.audit.record("access.denied", p.user_id or p.role, target=target, status=403,
                       client=client_host(request.scope), detail=f"{request.method} {route_path(request)}")
    raise HTTPException(403, detail)


def route_path(request: Request) -> str:
    """The matched route's template, never the raw path (a client cannot write lines into the log)."""
    route = request.scope.get("route")
    return route.path if route is not None else "unmatched"


def task_or_422(name: str):
    try:
        return get_task(name)
    except PrlmError as err:
        raise HTTPException(422, str(err)) from None
