"""The litellm backend against a real vLLM OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import sys

import pytest

from orchestrator.config import parse_config
from workers.batch import GenerationRequest
from workers.pool import ExpertPool

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def vllm_server(tiny_models, tmp_path_factory):
    from evals.bench.loopback import free_port, server

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_models["llama-b"]),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--kv-cache-memory-bytes",
        str(32 * 2**20),
    ]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/v1/models", log, timeout_s=240):
        yield f"{base}/v1"


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai"])
def test_litellm_expert_answers_through_the_server(vllm_server, provider):
    cfg = parse_config(
        {
            "pool": {
                "experts": [
                    {
                        "name": "served",
                        "backend": {
                            "type": "remote",
                            "model": f"{provider}/tiny",
                            "api_base": vllm_server,
                            "max_concurrency": 4,
                        },
                        "sampling": {"max_tokens": 6},
                    },
                    {
                        "name": "wrong-name",
                        "backend": {
                            "type": "remote",
                            "model": f"{provider}/nope",
                            "api_base": vllm_server,
                        },
                    },
                ]
            }
        }
    )
    reqs = [
        GenerationRequest(
            item_id=str(i), expert="served", messages=[{"role": "user", "content": f"q{i}"}]
        )
        for i in range(6)
    ] + [GenerationRequest(item_id="x", expert="wrong-name", prompt="hello")]
    with ExpertPool(cfg) as pool:
        results = pool.run(reqs)
    assert [r.item_id for r in results] == [*map(str, range(6)), "x"]
    for r in results[:6]:
        assert r.ok, r.error
        assert 0 < r.completion_tokens <= 6 and r.prompt_tokens > 0
    assert results[6].error.type == "RemoteRequestError"  # 404 unknown model: not retried
    assert results[6].attempts == 1
