"""Whether the Hugging Face Hub can be reached: shared by checkpoint and dataset loading, below both."""

from __future__ import annotations

from huggingface_hub import constants


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether one TCP connection to the hub opens within ``timeout`` seconds (no retries)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
