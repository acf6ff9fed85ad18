"""Building the OpenAI and Azure OpenAI backends from a spec (``openai:MODEL``,
``azure:DEPLOYMENT``) and options, with the standard environment variables as defaults (see
:mod:`promptkit.backends._openai`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from ._openai import OpenAIBackend

__all__ = ["azure_from_spec", "from_spec"]


def _option(options: dict[str, Any], key: str, env: str | None = None) -> Any:
    value = options.pop(key, None)
    if value is None and env:
        value = os.environ.get(env) or None
    return value


def from_spec(arg: str, **options: Any) -> OpenAIBackend:
    """``openai:MODEL`` with optional ``api_key``, ``base_url``, ``organization``,
    ``timeout`` (s), ``max_retries``, ``completions`` (bool), ``context_window``."""
    import openai

    if not arg:
        raise ConfigurationError("openai needs a model: openai:gpt-4o-mini")
    api_key = _option(options, "api_key", "OPENAI_API_KEY")
    base_url = _option(options, "base_url", "OPENAI_BASE_URL")
    organization = _option(options, "organization", "OPENAI_ORG_ID")
    common, extra = _common(options)
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
    endpoint = _option(options, "endpoint", "AZURE_OPENAI_ENDPOINT")
    api_key = _option(options, "api_key", "AZURE_OPENAI_API_KEY")
    provider = options.pop("azure_ad_token_provider", None)
    api_version = _option(options, "api_version", "OPENAI_API_VERSION")
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
    common, extra = _common(options)
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


def _common(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split options into client settings (timeout, max_retries) and backend settings."""
    client: dict[str, Any] = {}
    backend: dict[str, Any] = {}
    if "timeout" in options:
        client["timeout"] = float(options.pop("timeout"))
    if "max_retries" in options:
        client["max_retries"] = int(options.pop("max_retries"))
    if "completions" in options:
        backend["completions"] = bool(options.pop("completions"))
    if "context_window" in options:
        backend["context_window"] = int(options.pop("context_window"))
    if options:
        raise ConfigurationError(f"unknown option(s): {', '.join(sorted(options))}")
    client.setdefault("timeout", 60.0)
    client.setdefault("max_retries", 3)
    return client, backend
