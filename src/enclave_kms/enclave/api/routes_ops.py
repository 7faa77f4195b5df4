"""What operators and other replicas ask: readiness, the replica set, metrics, and the
state-head confirmation replicas give each other (enclave/replicas.py, docs/replicas.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from enclave_kms.enclave.api.models import In
from enclave_kms.enclave.api.support import add_route, app_context, new_router
from enclave_kms.errors import NotFoundError
from enclave_kms.wire import PeerView, Readiness, ReplicaSetView, StateConfirmation

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class ConfirmIn(In):
    nonce: Annotated[str, Field(pattern="^(?:[0-9a-fA-F]{2}){16,64}$", description="hex")]


def ready(request: Request) -> Readiness:
    """200 once this server may serve: the store answers and is not behind what it has seen,
    and (replicas) a majority confirmed the state head; else 503 `not_ready` or the storage
    error."""
    ctx = app_context(request)
    generation = _generation(request)
    if ctx.replicas is not None:
        ctx.replicas.require_ready()
    return Readiness(
        ready=True,
        replica=None if ctx.replicas is None else ctx.replicas.replica,
        generation=generation,
    )


def _generation(request: Request) -> int:
    refresh = app_context(request).refresh_state
    if refresh is None:
        return 0  # an API without a state tracker (tests over a bare store)
    head = refresh()
    return int(getattr(head, "generation", 0))


def confirm(request: Request, body: ConfirmIn) -> StateConfirmation:
    """For another replica: our state head as the database holds it, signed over its nonce
    (anonymous: it tells no more than every response's `ekms-state` header)."""
    replicas = app_context(request).replicas
    if replicas is None:
        raise NotFoundError("this server is not a replica (no state to confirm to peers)")
    return StateConfirmation(**replicas.confirm(bytes.fromhex(body.nonce)))


def list_replicas(request: Request) -> ReplicaSetView:
    """This replica and each peer as it answers now (a fresh, signed confirmation each)."""
    ctx = app_context(request)
    generation = _generation(request)
    replicas = ctx.replicas
    if replicas is None:
        return ReplicaSetView(
            replica=None, generation=generation, ready=True, reason="", needed=0, peers=()
        )
    views = [replicas.ask(url) for url in replicas.peers]
    peers = tuple(
        PeerView(
            url=v.url,
            replica=v.replica,
            generation=v.generation,
            lag=None if v.generation is None else generation - v.generation,
            reachable=v.generation is not None,
            error=v.error,
        )
        for v in views
    )
    return ReplicaSetView(
        replica=replicas.replica,
        generation=generation,
        ready=replicas.ready,
        reason=replicas.reason,
        needed=replicas.needed,
        peers=peers,
    )


def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text: request counts and latencies by route template and status, storage
    call latencies, audit batch sizes, state generation, readiness. No secrets, no key names."""
    ctx = app_context(request)
    text = "" if ctx.metrics is None else ctx.metrics.render()
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)


def router() -> APIRouter:
    r = new_router()
    add_route(r, "GET", "/v1/sys/ready", ready, op="sys.ready", permission=None)
    add_route(r, "GET", "/v1/sys/replicas", list_replicas, op="sys.replicas", permission="sys")
    add_route(
        r, "POST", "/v1/sys/replicas/confirm", confirm, op="sys.replicas.confirm", permission=None
    )
    add_route(
        r,
        "GET",
        "/metrics",
        metrics,
        op="sys.metrics",
        permission=None,
        response_class=PlainTextResponse,
        include_in_schema=False,  # Prometheus text, not part of the JSON API
    )
    return r
