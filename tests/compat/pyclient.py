#!/usr/bin/env python3
"""One GET with Python `requests` or `urllib`, the way their users write it.

Run as its own process so that proxy environment variables are read exactly
as they would be in a user's program. Takes one JSON argument:

  {"lib": "requests" | "urllib",
   "url": "...",
   "proxies": {"http": "...", "https": "..."} | null,   # null: the environment
   "cafile": "ca.pem",
   "proxy_auth_handler": ["user", "password"] | null}   # urllib only:
                                                       # ProxyBasicAuthHandler

and prints one JSON line: {"status", "error_type", "error", "body", "headers"}.
"error_type" names the exception class (with its module) when the call raised.
"""

import json
import ssl
import sys


def with_requests(spec):
    import requests

    s = requests.Session()
    kwargs = {"verify": spec["cafile"], "timeout": 30}
    if spec.get("proxies") is not None:
        kwargs["proxies"] = spec["proxies"]
    r = s.get(spec["url"], **kwargs)
    return r.status_code, r.text, dict(r.headers)


def with_urllib(spec):
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=spec["cafile"])
    handlers = [urllib.request.HTTPSHandler(context=ctx)]
    if spec.get("proxies") is not None:
        handlers.append(urllib.request.ProxyHandler(spec["proxies"]))
    else:
        handlers.append(urllib.request.ProxyHandler())  # the environment
    if spec.get("proxy_auth_handler"):
        user, password = spec["proxy_auth_handler"]
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, spec["proxy_uri"], user, password)
        handlers.append(urllib.request.ProxyBasicAuthHandler(mgr))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(spec["url"], timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        # An HTTP status (407 over plain HTTP, an origin 401): report it as one.
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def main():
    spec = json.loads(sys.argv[1])
    out = {"status": None, "error_type": None, "error": None, "body": None, "headers": {}}
    try:
        fn = with_requests if spec["lib"] == "requests" else with_urllib
        out["status"], out["body"], out["headers"] = fn(spec)
    except Exception as e:  # the test asserts on what a user's program would see
        out["error_type"] = "%s.%s" % (type(e).__module__, type(e).__qualname__)
        out["error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
