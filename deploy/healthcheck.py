"""Container health probe without curl: ``python healthcheck.py [/healthz|/readyz]``.

Exits 0 when ``http://127.0.0.1:$VOICE_PORT<path>`` answers 200 within the timeout, 1 otherwise
(refused, timed out, or any other status such as /readyz's 503 while draining). Stdlib only, so
it runs in the slim image with nothing extra installed.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 2.0


def probe(path: str, port: int) -> bool:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        # HTTPError (a 503) is a URLError too: every failure means "not healthy".
        return False


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    if not path.startswith("/"):
        print(f"healthcheck: path must start with '/', got {path!r}", file=sys.stderr)
        return 2
    port = int(os.environ.get("VOICE_PORT") or "8080")
    healthy = probe(path, port)
    if not healthy:
        print(f"healthcheck: {path} on port {port} is not healthy", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
