"""Whether an S3 bucket keeps versions, asked with one signed GET and no s3fs.

obstore has no call for GetBucketVersioning, and making s3fs to ask it costs
about a second of the daemon's CPU (botocore loads its service models, aiohttp
its parts) right after the mount comes up, when the first listing waits for
the answer (a versioned lake's refs pin version ids). The request itself is
one GET of ``?versioning``, signed here (AWS Signature Version 4, the few
lines a GET with no body needs: :func:`sigv4_headers`) and sent by the
standard library. botocore's signer would do the same after its imports,
~0.1 s of the daemon's CPU on the first listing's path.

:func:`bucket_versioned` answers True or False when the server does; None
when this way cannot ask (credentials only botocore's chain knows, a bucket
in another region, a refused signature), and the caller asks through s3fs,
which follows redirects and knows every source of credentials.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

#: The server's answers that settle the question as s3fs' query would: no versions known here.
_UNVERSIONED_CODES = ("AccessDenied", "NoSuchBucket")


def endpoint_and_region(options: dict[str, Any]) -> tuple[str, str]:
    """The lake's endpoint ('' for AWS itself) and region, from s3fs' options or the AWS environment."""
    client = dict(options.get("client_kwargs") or {})
    endpoint = client.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return endpoint or "", region or "us-east-1"


def _credentials(options: dict[str, Any]) -> tuple[str, str, str | None] | None:
    if options.get("key") and options.get("secret"):
        return str(options["key"]), str(options["secret"]), options.get("token")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret, os.environ.get("AWS_SESSION_TOKEN")
    return None


def _tls(options: dict[str, Any]) -> ssl.SSLContext:
    verify = dict(options.get("client_kwargs") or {}).get("verify", os.environ.get("AWS_CA_BUNDLE") or True)
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def _url(endpoint: str, region: str, bucket: str) -> str:
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}?versioning"  # path style, as every S3-compatible server takes
    if "." in bucket:  # (a dotted name breaks the wildcard certificate of a virtual host)
        return f"https://s3.{region}.amazonaws.com/{bucket}?versioning"
    return f"https://{bucket}.s3.{region}.amazonaws.com/?versioning"


def bucket_versioned(options: dict[str, Any], bucket: str, timeout: float) -> bool | None:
    """Whether ``bucket`` has versioning enabled (suspended counts as not, as in s3fs); None: ask another way.

    A connection that fails or stalls past ``timeout`` raises (OSError), as the
    s3fs query would have.
    """
    import urllib.error  # (here: the query runs after the mount is ready, and so do these imports)
    import urllib.request

    anon = bool(options.get("anon"))
    creds = None if anon else _credentials(options)
    if creds is None and not anon:
        return None
    endpoint, region = endpoint_and_region(options)
    url = _url(endpoint, region, bucket)
    headers: dict[str, str] = {}
    if creds is not None:
        headers = sigv4_headers(url, region, *creds)
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls(options)) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        code = _text(exc.read(), "Code")
        return False if code in _UNVERSIONED_CODES else None
    return _text(body, "Status") == "Enabled"


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sigv4_headers(url: str, region: str, key: str, secret: str, token: str | None = None,
                  now: dt.datetime | None = None) -> dict[str, str]:
    """The headers that sign a GET of ``url`` (no body) for S3 with Signature Version 4.

    For the URLs :func:`_url` makes: a path of plain characters (a bucket
    name), a query of one bare name (``versioning``).
    """
    parts = urlsplit(url)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": stamp}
    if token:
        headers["x-amz-security-token"] = token
    names = ";".join(sorted(headers))
    query = "&".join(sorted(f"{q}=" if "=" not in q else q for q in parts.query.split("&") if q))
    canonical = "\n".join(["GET", parts.path or "/", query, *(f"{n}:{headers[n]}" for n in sorted(headers)), "",
                           names, _EMPTY_SHA256])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing = f"AWS4{secret}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        signing = hmac.new(signing, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={names}, "
                                f"Signature={signature}")
    del headers["host"]  # (urllib sends the URL's own)
    return headers


def _text(xml: bytes, tag: str) -> str:
    """The text of the first element named ``tag`` (any namespace) in an S3 XML answer, '' if none."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ""
    for el in root.iter():
        if el.tag.rpartition("}")[2] == tag:
            return (el.text or "").strip()
    return ""
