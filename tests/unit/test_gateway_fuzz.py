"""Schemathesis against the gateway's OpenAPI schema: generated inputs never get a 5xx."""

from __future__ import annotations

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from orchestrator.conclave import Conclave
from orchestrator.config import GatewaySettings, parse_config
from orchestrator.gateway import create_app

EXPERTS = [
    {"name": "alpha", "backend": {"type": "fake", "answer": "The answer is (A)."}},
    {"name": "kw", "backend": {"type": "fake", "answer": "Keywords: math"}, "roles": ["keywords"]},
]


def _app() -> FastAPI:
    from evals.datasets import eval_items

    cfg = parse_config({"pool": {"experts": EXPERTS}, "routing": {"embedder": "ngram"}})
    conclave = Conclave(cfg)
    conclave.profile(eval_items("skillmix", limit=1), dataset="skillmix")
    return create_app(conclave, GatewaySettings(batch_window_ms=1))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.path, case.body, response.text)
    if response.status_code >= 400:  # errors in OpenAI's shape
        assert set(response.json()["error"]) >= {"message", "type"}
