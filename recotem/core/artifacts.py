"""Keys derived from SECRET_KEY (and its fallbacks): model artifacts and prediction request ids."""

from __future__ import annotations

from django.conf import settings

from recotem.lib.signing import RequestTokens, artifact_keys, request_token_keys


def _fallbacks() -> list[str]:
    return list(getattr(settings, "SECRET_KEY_FALLBACKS", None) or ())


def signing_keys() -> tuple[str, dict[str, bytes]]:
    """(current key id, {key id: key}) from SECRET_KEY and SECRET_KEY_FALLBACKS."""
    return artifact_keys(settings.SECRET_KEY, _fallbacks())


def request_tokens() -> RequestTokens:
    """Signer/verifier of prediction request ids (signs with SECRET_KEY, verifies fallbacks too)."""
    return RequestTokens(request_token_keys(settings.SECRET_KEY, _fallbacks()))
