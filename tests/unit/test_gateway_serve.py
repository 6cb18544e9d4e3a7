"""`conclave serve` and `orchestrator.gateway.serve`: loopback by default, experts
preloaded before serving, the facade closed after (uvicorn stubbed)."""

from __future__ import annotations

import pytest

from orchestrator.conclave import Conclave
from orchestrator.config import parse_config
from tests.unit.test_gateway import EXPERTS


def test_serve_help_is_light_and_binds_loopback_by_default():
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.config import GatewaySettings

    assert GatewaySettings().host == "127.0.0.1"
    res = CliRunner().invoke(app, ["serve", "--help"])
    assert res.exit_code == 0 and "OpenAI-compatible" in res.output


@pytest.mark.parametrize("flag", [None, "--no-preload"])
def test_serve_loads_the_experts_that_fit_before_serving(flag, tmp_path, monkeypatch):
    """`conclave serve` preloads (gateway.preload, on by default): by the time uvicorn
    starts, every expert that fits is loaded, so no first answer waits for a load."""
    import json

    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.gateway.draining import DrainingServer

    big = {"name": "big", "backend": {"type": "fake"}, "resources": {"memory_gb": 2}}
    cfg = tmp_path / "conclave.json"
    cfg.write_text(json.dumps({"pool": {"experts": [*EXPERTS, big], "memory_budget_gb": 5}}))
    seen = {}

    def run(server, sockets):  # instead of serving: what would the first client see?
        with TestClient(server.config.app) as client:
            seen.update({e["name"]: e["loaded"] for e in client.get("/v1/experts").json()["data"]})

    monkeypatch.setattr(DrainingServer, "run", run)
    args = ["serve", "--config", str(cfg), "--passthrough-only", "--port", "0"]
    args += [flag] if flag else []
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    if flag:
        assert not any(seen.values()) and "loaded" not in res.output
    else:  # five 1 GB experts fill the budget; big does not fit next to them
        assert seen == {**dict.fromkeys((e["name"] for e in EXPERTS), True), "big": False}
        assert "5 of 6 experts loaded" in res.output
        assert "big: skipped: does not fit next to the others: memory_gb" in res.output


def test_serve_prepares_the_facade_then_runs_uvicorn(monkeypatch):
    """`orchestrator.gateway.serve`, what `conclave serve` runs: the preload's lines and
    where it serves go to on_event, uvicorn gets the app, and the facade is closed after;
    a set-up error propagates to the caller."""
    from starlette.testclient import TestClient

    from orchestrator.errors import ConclaveError
    from orchestrator.gateway import serve
    from orchestrator.gateway.draining import DrainingServer

    big = {"name": "big", "backend": {"type": "fake"}, "resources": {"memory_gb": 2}}
    pool = {"experts": [*EXPERTS, big], "memory_budget_gb": 5}
    cfg = parse_config({"pool": pool, "gateway": {"port": 0}})  # 0: any free port
    seen: dict = {}

    def run(server, sockets):  # instead of serving: what would the first client see?
        c = server.config
        (sock,) = sockets  # bound before the set-up, on the port it reports
        seen.update(
            host=sock.getsockname()[0],
            port=sock.getsockname()[1],
            log_level=c.log_level,
            grace=c.timeout_graceful_shutdown,
        )
        with TestClient(c.app) as client:
            seen["models"] = [m["id"] for m in client.get("/v1/models").json()["data"]]
            seen["loaded"] = {
                e["name"]: e["loaded"] for e in client.get("/v1/experts").json()["data"]
            }

    monkeypatch.setattr(DrainingServer, "run", run)
    closed = []
    close = Conclave.close
    monkeypatch.setattr(Conclave, "close", lambda self: closed.append(close(self)))
    lines: list[str] = []
    serve(cfg, ensemble=False, on_event=lines.append)
    assert len(closed) == 1
    assert seen["loaded"] == {**dict.fromkeys((e["name"] for e in EXPERTS), True), "big": False}
    assert "conclave" not in seen["models"] and "alpha" in seen["models"]
    assert lines[0].startswith("5 of 6 experts loaded (")
    assert lines[1].startswith("  big: skipped: does not fit next to the others: memory_gb")
    assert lines[1].endswith("(loads on demand)")
    port = seen["port"]
    assert lines[2] == f"serving on http://127.0.0.1:{port} (no API keys configured); Ctrl-C stops"
    assert seen["host"] == "127.0.0.1" and port > 0
    assert seen["log_level"] == "warning" and seen["grace"] == 30
    assert lines[-2:] == ["stopped taking connections; closing the experts", "stopped"]
    with pytest.raises(ConclaveError, match="does not exist"):
        serve(cfg, data="/nonexistent/questions.jsonl", on_event=lines.append)
    assert len(closed) == 2  # the facade the failed set-up built is closed too


def test_a_port_another_process_holds_is_an_error_before_any_set_up(monkeypatch, held_port):
    """The socket is bound first: a taken port (or an address this machine lacks) fails
    at once, naming host and port and what to do, not after profiling and loading."""
    from orchestrator.errors import ConfigError
    from orchestrator.gateway import serve, serving

    def no_set_up(*_a, **_kw):
        raise AssertionError("set-up ran before the port was known to be free")

    monkeypatch.setattr(serving, "prepare", no_set_up)
    cfg = parse_config({"pool": {"experts": EXPERTS}, "gateway": {"port": held_port}})
    for ray_serve in (False, True):  # Ray's proxy would bind it: checked first too
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{held_port} .*--port"):
            serve(cfg, ensemble=False, ray_serve=ray_serve, on_event=lambda _line: None)
    elsewhere = cfg.model_copy(
        update={"gateway": cfg.gateway.model_copy(update={"host": "192.0.2.1", "port": 0})}
    )
    with pytest.raises(ConfigError, match="cannot listen on 192.0.2.1:0"):
        serve(elsewhere, ensemble=False, on_event=lambda _line: None)


@pytest.mark.parametrize(
    ("host", "keys", "warned"),
    [("0.0.0.0", "", True), ("0.0.0.0", "k1", False), ("127.0.0.1", "", False)],
)
def test_serving_beyond_loopback_without_keys_says_who_can_use_it(monkeypatch, host, keys, warned):
    from orchestrator.gateway import serve
    from orchestrator.gateway.draining import DrainingServer

    monkeypatch.setattr(DrainingServer, "run", lambda server, sockets: None)
    monkeypatch.setenv("CONCLAVE_API_KEYS", keys)
    cfg = parse_config({"pool": {"experts": EXPERTS}, "gateway": {"host": host, "port": 0}})
    lines: list[str] = []
    serve(cfg, ensemble=False, on_event=lines.append)
    where = next(line for line in lines if line.startswith("serving on"))
    assert ("anyone who can reach 0.0.0.0 can use it" in where) is warned, where
    assert ("gateway.api_keys" in where) is warned
