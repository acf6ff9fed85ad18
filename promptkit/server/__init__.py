"""``promptkit serve``: any promptkit backend behind an OpenAI-compatible HTTP API.

Endpoints (FastAPI; the OpenAPI description is at ``/openapi.json``, docs at ``/docs``):

- ``GET /v1/models``
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: non-streaming and streaming
  (server-sent events, ``stream_options.include_usage``), ``n``, ``stop``, ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``; ``logprobs`` (the top
  alternatives too) and ``echo`` for completions, ``logprobs`` / ``top_logprobs`` for chat, on
  local backends; token-id prompts for completions on local backends; ``response_format``
  ``json_schema`` (and ``json_object``) enforced by constrained decoding on local backends;
- the Azure routes ``/openai/deployments/{deployment}/chat/completions?api-version=...`` and
  ``.../completions`` (a deployment name may contain ``/``).

Errors use OpenAI's JSON shape (``{"error": {"message", "type", "param", "code"}}``) with the
matching status: 400 bad request (context length, a request over one of the
:class:`ServerLimits`, ``tools`` / ``functions`` not supported yet), 401 missing or wrong key,
404 unknown model or path, 413 body too large, 500 an unexpected error (named by its type only).
With an API key set (``--api-key`` or ``PROMPTKIT_API_KEY``) every request needs it
(``Authorization: Bearer KEY`` or Azure's ``api-key: KEY``), the OpenAPI description and docs
included.

Layout: ``_app`` (routes), ``_worker`` (the one thread that uses the model: batches, streams
that stop when their client leaves), ``_guard`` (limits, key, body size), ``_shapes`` (OpenAI's
request and answer shapes), ``_tokens`` (token-level generation and logprobs on local models),
``_errors`` (the one error mapper).
"""

from ._app import create_app, serve
from ._errors import ApiError
from ._guard import ServerLimits
from ._shapes import ChatRequest, CompletionRequest

__all__ = ["ApiError", "ChatRequest", "CompletionRequest", "ServerLimits", "create_app", "serve"]
