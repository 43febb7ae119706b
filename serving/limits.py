"""Request limits shared by the outer ASGI layer and the OpenAPI schemas.

A module of its own so that the cold start (:mod:`mamlctl.serving.app`) does not import the
pydantic request schemas (:mod:`mamlctl.serving.schemas`, built with the FastAPI part after
the models load) just for two numbers.
"""

#: Largest number of items in one batch request (more: 422). Configurable per app.
DEFAULT_MAX_BATCH = 4096
#: Largest request body in bytes (more: 413). Configurable per app.
DEFAULT_MAX_BODY = 1 << 20
