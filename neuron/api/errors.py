"""The HTTP face of the neuron's model errors: ``models/`` and ``loading/`` raise
:class:`~neuron.models.ModelError` kinds that know nothing of HTTP; this table says which status
and error code each one is."""

from __future__ import annotations

from cortex.protocol.errors import ApiError
from neuron.models import BadCheckpoint, BadModelId, BadQuant, ModelError, ModelNotFound, UnsupportedModel

# kind -> (ApiError kind, code): a bad checkpoint is the caller's files (400), not a conflict
KIND_OF_MODEL_ERROR: dict[type[ModelError], tuple[str, str | None]] = {
    BadModelId: ("invalid_request", None),
    BadQuant: ("invalid_request", None),
    ModelNotFound: ("not_found", None),
    BadCheckpoint: ("invalid_request", "bad_checkpoint"),
    UnsupportedModel: ("conflict", "unsupported_architecture"),
}


def api_error_of(exc: ModelError, model_id: str | None = None) -> ApiError:
    """The answer to send for ``exc``; ``model_id`` is named in a bad checkpoint's message."""
    for cls in type(exc).__mro__:
        if cls in KIND_OF_MODEL_ERROR:
            kind, code = KIND_OF_MODEL_ERROR[cls]
            break
    else:
        kind, code = "invalid_request", None
    message = str(exc)
    if isinstance(exc, BadCheckpoint) and model_id is not None:
        message = f"the checkpoint of {model_id!r} cannot be used: {message}"
    return ApiError(kind, message, param=exc.param, code=code)
