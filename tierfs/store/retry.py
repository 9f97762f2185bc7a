"""Retry with jittered exponential backoff, for temporary backend failures.

Runs in worker threads (the store's calls are blocking fsspec calls), so it
sleeps with ``time.sleep``; the FUSE loop is never inside it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# Failures that another attempt will not mend.
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
    NotImplementedError,
)


# Client-library errors about configuration, not the network.
_PERMANENT_NAMES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "NoRegionError", "ParamValidationError",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "DefaultCredentialsError", "ClientAuthenticationError",
})


# Service error codes (Azure's error_code) that another attempt will not mend.
_PERMANENT_CODES = frozenset({"BlobArchived", "BlobBeingRehydrated", "ContainerNotFound", "BlobNotFound"})


def is_temp_failure(exc: BaseException) -> bool:
    """True when the same request may well succeed if sent again."""
    if isinstance(exc, _PERMANENT) or is_credentials_error(exc):
        return False
    if getattr(exc, "error_code", None) in _PERMANENT_CODES:
        return False
    status = getattr(exc, "status_code", None)  # azure-core's HttpResponseError
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False  # the request itself is wrong: sending it again cannot help
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    # Client libraries under fsspec raise their own trees (botocore, aiohttp,
    # google-auth, azure-core) for network trouble.
    module = type(exc).__module__.split(".")[0]
    return module in ("botocore", "aiohttp", "aiobotocore", "google", "azure", "requests", "urllib3")


# Azure's error codes for a key or token the account refuses.
_CREDENTIAL_CODES = frozenset({"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
                               "InvalidAuthenticationInfo", "NoAuthenticationInformation"})


def is_credentials_error(exc: BaseException) -> bool:
    return type(exc).__name__ in _PERMANENT_NAMES or getattr(exc, "error_code", None) in _CREDENTIAL_CODES


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` up to ``attempts`` + 1 times while it fails temporarily."""
    for attempt in range(attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not is_temp_failure(exc):
                if attempt and is_temp_failure(exc):
                    log.warning("%s: giving up after %d retries: %s", what, attempt, _one_line(exc))
                raise
            if on_retry is not None:
                on_retry(exc)
            delay = random.uniform(0, min(max_delay, base_delay * 2**attempt))
            log.debug("%s failed (%s); retry %d in %.2fs", what, _one_line(exc), attempt + 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
