"""How a webhook delivery proves where it comes from: an HMAC-SHA256 over a timestamp and the body.

The scheme is Stripe's and GitHub's: the signed text is `<unix seconds>.` followed by the raw body,
so a receiver that checks the signature in constant time and refuses timestamps older than a few
minutes rejects both forged and replayed deliveries. `verify` is what a receiver does (README,
"Webhooks", shows the same in a few lines of its own).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SCHEME = "sha256="
TOLERANCE_S = 300

DELIVERY_HEADER = "X-Machine-Hub-Delivery"
EVENT_HEADER = "X-Machine-Hub-Event"
TIMESTAMP_HEADER = "X-Machine-Hub-Timestamp"
SIGNATURE_HEADER = "X-Machine-Hub-Signature"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Machine-Hub-Signature` value of `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, *, now_s: float, tolerance_s: int = TOLERANCE_S
) -> bool:
    """True when `signature` signs `body` at `timestamp` and that is within `tolerance_s` of now."""
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
