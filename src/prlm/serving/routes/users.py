"""Users: the admin token provisions users and issues their tokens; any token asks whose it is."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from prlm.serving.access import admin, get_state, principal
from prlm.serving.auth import hash_token, new_user_token
from prlm.serving.schemas import USER_ID_PATTERN, Me, NewUser, UserToken, normal_user_id
from prlm.serving.state import Principal, ServerState

router = APIRouter(tags=["users"])


@router.post("/v1/users", status_code=201, response_model=UserToken,
             summary="Create a user and issue their token (admin)")
def create_user(body: NewUser, _: Principal = Depends(admin), state: ServerState = Depends(get_state)):
    token = new_user_token()
    state.store.create_user(body.user_id, hash_token(token))
    return UserToken(user_id=body.user_id, token=token)


@router.post("/v1/users/{user_id}/token", response_model=UserToken,
             summary="Issue a new token for a user; the old one stops working (admin)")
def rotate_token(user_id: str = PathParam(pattern=USER_ID_PATTERN), _: Principal = Depends(admin),
                 state: ServerState = Depends(get_state)):
    user_id = normal_user_id(user_id)
    token = new_user_token()
    state.store.set_token_hash(user_id, hash_token(token))
    return UserToken(user_id=user_id, token=token)


@router.get("/v1/me", response_model=Me, summary="Who the token belongs to")
def me(p: Principal = Depends(principal)):
    return Me(user_id=p.user_id, role=p.role)
