"""Whether a host can be reached, asked before a download that would otherwise hang or retry for a minute
without network (torchvision's urlopen has no timeout; huggingface_hub retries). Standard library only."""

from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the url's host (or to the proxy that would carry the request) opens
    within `timeout` seconds; in a thread, so that a DNS lookup that hangs is bounded by it too."""
    target = urlparse(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    opened = []

    def connect():
        try:
            socket.create_connection((target.hostname, port), timeout=timeout).close()
            opened.append(True)
        except (OSError, UnicodeError):
            pass
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)
