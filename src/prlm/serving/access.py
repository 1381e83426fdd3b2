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


def admin(p: Principal = Depends(principal)) -> Principal:
    if p.role != "admin":
        raise HTTPException(403, "this needs the admin token")
    return p


def owner(user_id: str = PathParam(pattern=USER_ID_PATTERN), p: Principal = Depends(principal)) -> str:
    if p.role == "admin":
        raise HTTPException(403, "the admin token does not read or write profiles; use the user's token")
    user_id = normal_user_id(user_id)
    if p.user_id != user_id:
        raise HTTPException(403, "a user token reaches only its own user id")
    return user_id


def task_or_422(name: str):
    try:
        return get_task(name)
    except PrlmError as err:
        raise HTTPException(422, str(err)) from None
