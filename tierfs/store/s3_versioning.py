"""Whether an S3 bucket keeps versions, asked with one signed GET and no s3fs.

obstore has no call for GetBucketVersioning, and making s3fs to ask it costs
about a second of the daemon's CPU (botocore loads its service models, aiohttp
its parts) right after the mount comes up, when the first listing waits for
the answer (a versioned lake's refs pin version ids). The request itself is
one GET of ``?versioning``: botocore's signer signs it, the standard library
sends it.

:func:`bucket_versioned` answers True or False when the server does; None
when this way cannot ask (credentials only botocore's chain knows, a bucket
in another region, a refused signature), and the caller asks through s3fs,
which follows redirects and knows every source of credentials.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

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
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed = AWSRequest(method="GET", url=url)
        S3SigV4Auth(Credentials(*creds), "s3", region).add_auth(signed)
        headers = {k: str(v) for k, v in signed.headers.items()}
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls(options)) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        code = _text(exc.read(), "Code")
        return False if code in _UNVERSIONED_CODES else None
    return _text(body, "Status") == "Enabled"


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
