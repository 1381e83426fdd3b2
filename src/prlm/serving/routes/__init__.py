"""The API's routes, one router an area; `ROUTERS` in the order the app includes them (the order routes match
in, and the OpenAPI schema lists them in)."""

from prlm.serving.routes.generation import router as generation
from prlm.serving.routes.operations import router as operations
from prlm.serving.routes.page import router as page
from prlm.serving.routes.profiles import router as profiles
from prlm.serving.routes.users import router as users

ROUTERS = (users, profiles, generation, operations, page)
