"""The API description of the webhook routes, and of the deliveries the worker sends (OpenAPI's
`webhooks`); api/openapi.py merges it in."""

from __future__ import annotations

from typing import Any

from api.openapi_parts import AUTH, BODY, DEFAULTS, SECURED, STRING, error_answer, json_answer, json_body, param
from core import errors
from core.signatures import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER


def paths() -> dict[str, Any]:
    secured = SECURED
    webhook_id = param("webhook_id", "path", "Webhook id (`wh_` and 16 hex digits)", STRING, True)
    missing = error_answer("No such webhook in the caller's namespace", errors.WebhookNotFound())
    return {
        "/api/webhooks": {
            "post": {
                "summary": "Add a webhook: the worker POSTs the chosen events of the namespace to its URL, signed",
                "security": secured,
                "requestBody": json_body("WebhookRequest"),
                "responses": {
                    "201": json_answer("WebhookCreated", "The webhook and its signing secret, shown only this once"),
                    "400": error_answer(
                        "A bad body (detail names the field, or the URL's rule it breaks)",
                        errors.InvalidBody("Invalid enum value 'job.nope' - at `$.events[0]`"),
                        errors.InvalidBody("169.254.169.254 is not a public address - at `$.url`"),
                    ),
                    **BODY,
                    "409": error_answer(
                        "The namespace has MACHINE_HUB_MAX_WEBHOOKS_PER_NAMESPACE webhooks (`limit` names it)",
                        errors.TooManyWebhooks(
                            f"namespace team has {DEFAULTS.max_webhooks_per_namespace} webhooks, the most it may "
                            "have; remove one first",
                            limit="max_webhooks_per_namespace",
                        ),
                    ),
                    **AUTH,
                },
            },
            "get": {
                "summary": "The namespace's webhooks (never their secrets)",
                "security": secured,
                "responses": {"200": json_answer("WebhookList", "Oldest first"), **AUTH},
            },
        },
        "/api/webhooks/{webhook_id}": {
            "delete": {
                "summary": "Remove a webhook; deliveries still queued for it are dropped",
                "security": secured,
                "parameters": [webhook_id],
                "responses": {"204": {"description": "Removed"}, "404": missing, **AUTH},
            }
        },
        "/api/webhooks/{webhook_id}/deliveries": {
            "get": {
                "summary": "The webhook's last delivery attempts, newest first",
                "security": secured,
                "parameters": [webhook_id],
                "responses": {"200": json_answer("DeliveryList", "Up to 100 attempts"), "404": missing, **AUTH},
            }
        },
    }


def webhooks() -> dict[str, Any]:
    """What the worker sends to a webhook's URL (OpenAPI's `webhooks`)."""
    header = {
        DELIVERY_HEADER: "The delivery id, the same on every attempt: drop the repeats",
        EVENT_HEADER: "The event, as in the body's `type`",
        TIMESTAMP_HEADER: "Unix seconds when this attempt was signed",
        SIGNATURE_HEADER: "`sha256=` and the hex HMAC-SHA256 of `<timestamp>.<raw body>` with the secret",
    }
    return {
        "delivery": {
            "post": {
                "summary": "A delivery: any 2xx ends it; anything else is tried again (README, Webhooks)",
                "parameters": [param(name, "header", text, STRING, True) for name, text in header.items()],
                "requestBody": json_body("WebhookPayload"),
                "responses": {"2XX": {"description": "Delivered"}},
            }
        }
    }
