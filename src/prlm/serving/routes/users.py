"""Users: the admin token provisions users and issues their tokens; any token asks whose it is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam

from prlm.serving.access import admin, get_state, principal
from prlm.serving.auth import hash_token, new_user_token
from prlm.serving.middleware import client_host
from prlm.serving.schemas import USER_ID_PATTERN, Me, NewUser, UserDeleted, UserToken, normal_user_id
from prlm.serving.state import Principal, ServerState

router = APIRouter(tags=["users"])


@router.post("/v1/users", status_code=201, response_model=UserToken,
             summary="Create a user and issue their token (admin)")
def create_user(request: Request, body: NewUser, _: Principal = Depends(admin),
                state: ServerState = Depends(get_state)):
    token = new_user_token()
    state.store.create_user(body.user_id, hash_token(token))
    state.audit.record("user.create", "admin", target=body.user_id, status=201, client=client_host(request.scope))
    return UserToken(user_id=body.user_id, token=token)


@router.post("/v1/users/{user_id}/token", response_model=UserToken,
             summary="Issue a new token for a user; the old one stops working (admin)")
def rotate_token(request: Request, user_id: str = PathParam(pattern=USER_ID_PATTERN), _: Principal = Depends(admin),
                 state: ServerState = Depends(get_state)):
    user_id = normal_user_id(user_id)
    token = new_user_token()
    state.store.set_token_hash(user_id, hash_token(token))
    state.audit.record("token.rotate", "admin", target=user_id, status=200, client=client_host(request.scope))
    return UserToken(user_id=user_id, token=token)


@router.delete("/v1/users/{user_id}", response_model=UserDeleted,
               summary="Erase a user: their token, every entry, and what the server derived from them (admin)")
def delete_user(request: Request, user_id: str = PathParam(pattern=USER_ID_PATTERN), _: Principal = Depends(admin),
                state: ServerState = Depends(get_state)):
    user_id = normal_user_id(user_id)
    erased = state.store.delete_user(user_id)  # one transaction: the token stops working with the entries
    if state.engine is not None:
        state.engine.index.forget(user_id)  # the cached index: entries, BM25's tokens, embeddings
    state.limits.forget(user_id)
    state.audit.record("user.delete", "admin", target=user_id, status=200, client=client_host(request.scope),
                       detail=f"{erased} entries erased")
    return UserDeleted(user_id=user_id, entries_erased=erased)


@router.get("/v1/me", response_model=Me, summary="Who the token belongs to")
def me(p: Principal = Depends(principal)):
    return Me(user_id=p.user_id, role=p.role)
