"""Retry with jittered exponential backoff, for temporary backend failures.

Runs in worker threads (the store's calls are blocking fsspec calls), so it
sleeps with ``time.sleep``; the FUSE loop is never inside it.
"""

from __future__ import annotations

import logging
import random
import re
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
    if type(exc).__module__.startswith("obstore"):
        return _obstore_temp(exc)
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


#: obstore's errors that no retry mends (a missing object comes as FileNotFoundError).
_OBSTORE_PERMANENT = frozenset({"PreconditionError", "NotModifiedError", "InvalidPathError", "NotSupportedError",
                                "AlreadyExistsError", "PermissionDeniedError", "UnauthenticatedError",
                                "UnknownConfigurationKeyError", "NotImplementedError"})
_HTTP_STATUS = re.compile(r"\b([1-5]\d\d) [A-Z][A-Za-z ]+")


def _obstore_temp(exc: BaseException) -> bool:
    """obstore (retries off) says what the server answered in its message: 4xx but 408/429 is final."""
    if type(exc).__name__ in _OBSTORE_PERMANENT:
        return False
    match = _HTTP_STATUS.search(str(exc))
    if match:
        status = int(match.group(1))
        return status >= 500 or status in (408, 429)
    return True  # connection refused or reset, timeouts


# Azure's error codes for a key or token the account refuses.
_CREDENTIAL_CODES = frozenset({"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
                               "InvalidAuthenticationInfo", "NoAuthenticationInformation"})


def is_credentials_error(exc: BaseException) -> bool:
    return (type(exc).__name__ in _PERMANENT_NAMES or getattr(exc, "error_code", None) in _CREDENTIAL_CODES
            or type(exc).__name__ in ("UnauthenticatedError", "PermissionDeniedError"))


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float = float("inf"),
) -> T:
    """Call ``fn`` up to ``attempts`` + 1 times while it fails temporarily, and for at most ``deadline`` s.

    No attempt starts once the deadline has passed, nor one whose backoff would
    end past it: the last error is raised instead.
    """
    end = time.monotonic() + deadline
    for attempt in range(attempts + 1):
        try:
            return fn()
        except Exception as exc:
            delay = random.uniform(0, min(max_delay, base_delay * 2**attempt))
            out_of_time = time.monotonic() + delay >= end
            if attempt >= attempts or out_of_time or not is_temp_failure(exc):
                if is_temp_failure(exc) and (attempt or out_of_time):
                    log.warning("%s: giving up after %d retries%s: %s", what, attempt,
                                " (deadline passed)" if out_of_time else "", _one_line(exc))
                raise
            if on_retry is not None:
                on_retry(exc)
            log.debug("%s failed (%s); retry %d in %.2fs", what, _one_line(exc), attempt + 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
