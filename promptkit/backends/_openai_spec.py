"""Building the OpenAI and Azure OpenAI backends from a spec (``openai:MODEL``,
``azure:DEPLOYMENT``) and options, with the standard environment variables as defaults (see
:mod:`promptkit.backends._openai`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from ._openai import OpenAIBackend
from ._options import check_known, flag, seconds, text, whole

__all__ = ["azure_from_spec", "from_spec"]


_COMMON = ("timeout", "max_retries", "completions", "context_window")


def _option(backend: str, options: dict[str, Any], key: str, env: str | None = None) -> Any:
    """Text option ``key`` (popped from ``options``), else the environment variable ``env``."""
    value = text(backend, key, options.pop(key, None))
    if value is None and env:
        value = os.environ.get(env) or None
    return value


def from_spec(arg: str, **options: Any) -> OpenAIBackend:
    """``openai:MODEL`` with optional ``api_key``, ``base_url``, ``organization``,
    ``timeout`` (s), ``max_retries``, ``completions`` (bool), ``context_window``."""
    import openai

    if not arg:
        raise ConfigurationError("openai needs a model: openai:gpt-4o-mini")
    api_key = _option("openai", options, "api_key", "OPENAI_API_KEY")
    base_url = _option("openai", options, "base_url", "OPENAI_BASE_URL")
    organization = _option("openai", options, "organization", "OPENAI_ORG_ID")
    common, extra = _common("openai", options, ("api_key", "base_url", "organization"))
    if api_key is None:
        if base_url is None:
            raise ConfigurationError(
                "openai: no API key; set OPENAI_API_KEY (or pass api_key=), or point base_url "
                "at an OpenAI-compatible server that needs none"
            )
        api_key = "unused"  # self-hosted servers often need no key; the SDK wants one
    settings = {"api_key": api_key, "base_url": base_url, "organization": organization, **common}
    return OpenAIBackend(
        arg,
        client=openai.OpenAI(**settings),
        async_client=openai.AsyncOpenAI(**settings),
        name=f"openai:{arg}",
        batch_api=True,
        **extra,
    )


def azure_from_spec(arg: str, **options: Any) -> OpenAIBackend:
    """``azure:DEPLOYMENT`` with optional ``endpoint``, ``api_key`` (or
    ``azure_ad_token_provider``), ``api_version``, ``timeout``, ``max_retries``,
    ``completions``, ``context_window``."""
    import openai

    if not arg:
        raise ConfigurationError("azure needs a deployment name: azure:my-gpt4o-deployment")
    endpoint = _option("azure", options, "endpoint", "AZURE_OPENAI_ENDPOINT")
    api_key = _option("azure", options, "api_key", "AZURE_OPENAI_API_KEY")
    provider = options.pop("azure_ad_token_provider", None)
    if provider is not None and not callable(provider):
        raise ConfigurationError(
            "azure: azure_ad_token_provider must be a function returning a token "
            "(azure.identity.get_bearer_token_provider gives one)"
        )
    api_version = _option("azure", options, "api_version", "OPENAI_API_VERSION")
    missing = [
        what
        for what, value in (
            ("AZURE_OPENAI_ENDPOINT (or endpoint=)", endpoint),
            (
                "AZURE_OPENAI_API_KEY (or api_key=, or azure_ad_token_provider=)",
                api_key or provider,
            ),
            ("OPENAI_API_VERSION (or api_version=)", api_version),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(f"azure:{arg} needs " + "; ".join(missing))
    own = ("endpoint", "api_key", "azure_ad_token_provider", "api_version")
    common, extra = _common("azure", options, own)
    settings: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "api_version": api_version,
        **common,
    }
    if api_key:
        settings["api_key"] = api_key
    else:
        settings["azure_ad_token_provider"] = provider
    return OpenAIBackend(
        arg,
        client=openai.AzureOpenAI(**settings),
        async_client=openai.AsyncAzureOpenAI(**settings),
        name=f"azure:{arg}",
        **extra,
    )


def _common(
    backend: str, options: dict[str, Any], own: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the options left after the backend's ``own`` into client settings (timeout,
    max_retries) and backend settings (completions, context_window), checked."""
    client: dict[str, Any] = {}
    backend_settings: dict[str, Any] = {}
    if "timeout" in options:
        client["timeout"] = seconds(backend, "timeout", options.pop("timeout"))
    if "max_retries" in options:
        client["max_retries"] = whole(backend, "max_retries", options.pop("max_retries"), 0)
    if "completions" in options:
        backend_settings["completions"] = flag(backend, "completions", options.pop("completions"))
    if "context_window" in options:
        window = options.pop("context_window")
        backend_settings["context_window"] = whole(backend, "context_window", window, 1)
    check_known(backend, options, own + _COMMON)
    client.setdefault("timeout", 60.0)
    client.setdefault("max_retries", 3)
    return client, backend_settings
