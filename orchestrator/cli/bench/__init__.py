"""`conclave bench`: benchmarks that print figures (as tables, or JSON with --json), a
module per benchmark; the commands are registered here, in the order `--help` lists them."""

from __future__ import annotations

import typer

from orchestrator.cli.bench import faults, free_agents, gateway, moe, pool, routing

app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.command("pool")(pool.bench_pool)
app.command("route")(routing.bench_route)
app.command("routing")(routing.bench_routing)
app.command("gateway")(gateway.bench_gateway)
app.command("free-agents")(free_agents.bench_free_agents)
app.command("failover")(faults.bench_failover)
app.command("holds")(faults.bench_holds)
app.command("moe")(moe.bench_moe)
