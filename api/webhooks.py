"""The webhook routes: add, list and remove a namespace's webhooks, and read one's delivery log.

Every route works on the caller's namespace only: another namespace's webhook is 404, exactly as
one that never existed. A URL is checked here (core.destinations) without looking its host up, so
no request waits on DNS; its addresses are checked at each delivery by the worker.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.hub import hub_of
from api.requests import decode, json_response
from core.destinations import UnfitURL, check_url
from core.errors import InvalidBody, WebhookNotFound
from core.webhooks import DeliveryList, WebhookCreated, WebhookList, WebhookRequest

_decoder = msgspec.json.Decoder(WebhookRequest)


async def create_webhook(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    body = decode(await request.body(), _decoder)
    try:
        check_url(body.url, allow_private=hub.settings.webhook_allow_private)
    except UnfitURL as exc:
        raise InvalidBody(f"{exc} - at `$.url`") from None
    record = await hub.webhooks.create(ns, body.url, body.events, limit=hub.settings.max_webhooks_per_namespace)
    view = record.view()
    created = WebhookCreated(**msgspec.structs.asdict(view), secret=record.secret)
    return json_response(created, status_code=201)


async def list_webhooks(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    return json_response(WebhookList(webhooks=[record.view() for record in await hub.webhooks.all(ns)]))


async def delete_webhook(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    if not await hub.webhooks.remove(ns, request.path_params["webhook_id"]):
        raise WebhookNotFound()
    return Response(status_code=204)


async def list_deliveries(request: Request) -> Response:
    hub = hub_of(request)
    ns = await hub.authenticate(request)
    attempts = await hub.webhooks.deliveries(ns, request.path_params["webhook_id"])
    if attempts is None:
        raise WebhookNotFound()
    return json_response(DeliveryList(deliveries=attempts))


async def webhooks(request: Request) -> Response:
    # One route for both methods, so that a 405 there lists both in its Allow header.
    return await (create_webhook(request) if request.method == "POST" else list_webhooks(request))


routes: list[BaseRoute] = [
    Route("/api/webhooks", webhooks, methods=["GET", "POST"]),
    Route("/api/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    Route("/api/webhooks/{webhook_id}/deliveries", list_deliveries, methods=["GET"]),
]
