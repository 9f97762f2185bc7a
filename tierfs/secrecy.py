"""Where a secret may be: never in a message, and on disk only in a file its owner alone can read.

The settings' own secrets (``[s3] secret``, ``[redis] password`` and
``secret``, credentials among ``[store] options`` or in a URL) are named by
``secrets_in`` and never echoed by a config error (``hidden``); a lake URL
that carries credentials is refused outright (``url_credentials``), since a
URL is shown wherever the lake is named. A config file that holds a secret
(``check_private``), and the files that hold the others (``[redis]
secret_file``, ``[cache] encryption_key_file``, ``[backup] secret_file``:
``check_secret_files`` before a mount, ``read_secret`` wherever one is read),
must not be readable by other users.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierfs.errors import ConfigError

if TYPE_CHECKING:
    from tierfs.config import Settings

log = logging.getLogger(__name__)

#: Settings that hold secrets (never in reprs; a config file holding one must be private).
_SECRET_ATTRS = {"s3_secret": "[s3] secret", "redis_password": "[redis] password", "redis_secret": "[redis] secret"}
#: Store options that hold secrets (Azure account keys, connection strings, SAS tokens, passwords).
_SECRET_OPTION = ("key", "secret", "token", "password", "connection_string", "sas", "credential")
#: Values of such options that name a way to find credentials rather than being one (gcsfs' token).
_NOT_SECRET = frozenset({"anon", "google_default", "cloud", "browser", "cache"})
#: Config keys whose value is never shown: secrets, and the store's options (a bad one is no table to look into).
_HIDDEN_KEYS = frozenset({("s3", "secret"), ("redis", "password"), ("redis", "secret"), ("store", "options")})
#: Config keys holding a URL, shown without the credentials it may carry.
_URL_KEYS = frozenset({("lake", "url"), ("redis", "url")})
#: Schemes whose URLs have no user part of their own: anything before an @ in the host is a credential.
_NO_USER_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs"})


class _Hidden:
    def __repr__(self) -> str:
        return "<hidden>"


HIDDEN = _Hidden()


def url_credentials(url: str) -> bool:
    """Whether ``url`` carries credentials (``s3://KEY:SECRET@bucket``); ``abfs://container@account…`` does not."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, _host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")
    return bool(sep and at) and (":" in userinfo or scheme.lower() in _NO_USER_SCHEMES)


def without_credentials(url: str) -> str:
    """``url`` with whatever precedes the @ of its host shown as <hidden>."""
    if not url_credentials(url):
        return url
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://<hidden>@{host.rpartition('@')[2]}{slash}{path}"


def hidden(section: str, name: str, raw: Any) -> Any:
    """What a config error may show of ``raw``, the value of ``[section] name``: HIDDEN for a secret."""
    if (section, name) in _HIDDEN_KEYS:
        return HIDDEN
    if (section, name) in _URL_KEYS and "@" in repr(raw):
        return without_credentials(raw) if isinstance(raw, str) else HIDDEN
    return raw


def secrets_in(settings: Settings) -> list[str]:
    """Which secrets ``settings`` holds, by their config names."""
    out = [name for attr, name in _SECRET_ATTRS.items() if getattr(settings, attr)]
    if "@" in settings.redis_url.split("://", 1)[-1].split("/", 1)[0]:
        out.append("[redis] url (a password in it)")
    out += [f"[store] options.{k}" for k, v in settings.store_options.items()
            if v and any(word in k.lower() for word in _SECRET_OPTION)
            and not str(v).startswith("/") and str(v) not in _NOT_SECRET]
    return out


def check_private(path: Path, settings: Settings, allow_readable: bool = False) -> str:
    """A config file holding secrets must not be readable by others: refused (unless allowed), or a warning.

    Readable by other users: refused, unless ``allow_readable``; readable by
    its group: a warning. Returns the warning ('' when there is none).
    """
    held = secrets_in(settings)
    if not held:
        return ""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return ""
    what = f"{path} holds {', '.join(held)} and can be read by"
    if mode & 0o004:
        if not allow_readable:
            raise ConfigError(f"{what} every user (mode {mode:04o}): chmod 600 {path}, "
                              "or pass --allow-readable-secrets to use it anyway")
        return f"{what} every user (mode {mode:04o}); chmod 600 {path}"
    if mode & 0o040:
        return f"{what} its group (mode {mode:04o}); chmod 600 {path} unless that group is meant to"
    return ""


def _secret_files(settings: Settings) -> list[tuple[str, str]]:
    """(config key, path) of the files a mount reads secrets from."""
    out = [("[cache] encryption_key_file", settings.cache_key_file)]
    if settings.redis_url and not settings.redis_secret:  # (a secret in the config is used before the file)
        out.append(("[redis] secret_file", settings.redis_secret_file))
    return [(key, path) for key, path in out if path]


def private_file(key: str, path: str, mode: int, allow_readable: bool | None) -> str:
    """A file holding a secret that other users can read: refused, or (``allow_readable``) a warning, returned.

    ``allow_readable`` False: refused, naming --allow-readable-secrets; None
    (a command without that flag): refused. '' for a private file.
    """
    who = "every user" if mode & 0o004 else "its group" if mode & 0o040 else ""
    if not who:
        return ""
    line = f"{key} {path} can be read by {who} (mode {mode & 0o777:04o})"
    if not allow_readable:
        offer = ", or pass --allow-readable-secrets to use it anyway" if allow_readable is False else ""
        raise ConfigError(f"{line}: chmod 600 {path}{offer}")
    return f"{line}; chmod 600 {path}"


def check_secret_files(settings: Settings, allow_readable: bool) -> str:
    """Before a mount starts: refuse the secret files others can read (see ``private_file``); the warnings."""
    notes = []
    for key, path in _secret_files(settings):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # (reading it says why, in one line)
        notes.append(private_file(key, path, mode, allow_readable))
    return "; ".join(n for n in notes if n)


def read_secret(value: str, file: str, env: str, key: str, allow_readable: bool | None = None) -> bytes:
    """A secret from the config, the file config ``key`` names, or an environment variable, in that order.

    A file other users can read is refused unless ``allow_readable`` (see
    ``private_file``); allowed, it is used with a warning in the log.
    """
    if value:
        return value.encode()
    if not file:
        return os.environ.get(env, "").encode()
    try:
        with open(file, "rb") as fh:
            note = private_file(key, file, os.fstat(fh.fileno()).st_mode, allow_readable)
            data = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {key} {file}: {exc.strerror or exc}") from None
    if note:
        log.warning("%s", note)
    if not data:
        raise ConfigError(f"{key} {file} is empty: put at least 16 random bytes in it "
                          f"(head -c 32 /dev/urandom | base64 > {file})")
    return data
