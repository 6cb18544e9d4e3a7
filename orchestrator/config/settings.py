"""How the service behaves: keyword sampling, recruitment, aggregation, the gateway and
the free-agent monitor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
)

from orchestrator.config.base import (
    Strict,
)

KEYWORD_PROMPT = (
    "Question: {question}\n\n"
    "What are the core knowledge, subjects or skills needed to solve this problem? "
    "List 2-5 keywords separated by commas. Example keywords: psychology, virology, "
    "behavioral theory, microbiology, diplomacy, political science, property law, finance, "
    "business. Give only the keywords, no other words or explanation.\n\n"
    "Follow this format:\nKeywords: <keyword1>, <keyword2>, ..."
)


class KeywordSettings(Strict):
    """How keywords are drawn and filtered (the paper's values are the defaults)."""

    prompt: str = Field(KEYWORD_PROMPT, description="Prompt; {question} is replaced.")
    samples: int = Field(5, ge=1, le=64, description="Samples drawn per question.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature.")
    max_tokens: int = Field(64, ge=1, description="Most tokens per sample.")
    max_chars: int = Field(20, ge=1, description="Longer keywords are dropped.")
    min_samples: int = Field(
        2, ge=1, description="Keep a keyword found in at least this many samples (paper: 2)."
    )
    seed: int = Field(0, description="Base seed; sample i of a question uses seed + i.")


class RouterSettings(Strict):
    """Recruitment parameters (the paper's values are the defaults)."""

    type: str = Field(
        "symbolic-moe",
        min_length=1,
        description="The registered router (skills.router.ROUTERS): 'symbolic-moe', the "
        "paper's S(m,q) x g(m) draw, or one a plug-in registers.",
    )
    k: int = Field(3, ge=1, le=64, description="Experts recruited per question.")
    temperature: float = Field(0.5, gt=0.0, description="T in g(m)^(1/T); lower is sharper.")
    replacement: bool = Field(
        True, description="Draw with replacement (the paper) or k distinct experts."
    )
    seed: int = Field(0, description="Seed of the draws.")


class RoutingConfig(Strict):
    """How questions reach experts: keywords, recruitment and aggregation."""

    keywords: KeywordSettings = Field(
        default_factory=KeywordSettings, description="Keyword sampling and filtering."
    )
    keyword_expert: str | None = Field(
        None, description="Expert that extracts keywords; unset: the one with role 'keywords'."
    )
    router: RouterSettings = Field(default_factory=RouterSettings, description="Recruitment.")
    fallback: str | None = Field(
        None,
        description="The expert (a generalist) 'conclave' asks for a question outside the "
        "profile's scope: free-form (no options to choose from) or unlike every validation "
        "question. Its answer comes back as it is, with a low confidence and the reason in "
        "the trace. Unset: the routed experts answer anyway, and the trace says so.",
    )
    skills: Literal["auto", "keywords", "embedding"] = Field(
        "auto",
        description="Where the 'conclave' strategy gets a question's skills: 'keywords' asks "
        "the keyword model (the paper's path, 'symbolic-moe' always does), 'embedding' takes "
        "the keywords of its nearest validation questions by the inventory's embedder: no "
        "LLM call, milliseconds, and the same skills for the same question every time. "
        "'auto' (the default): the embedding unless profiling found, leaving each "
        "validation question out, that it ranks a right expert first more than a point "
        "less often than the keyword model (RoutingState.skills_scores).",
    )
    on_expert_down: Literal["failover", "wait", "fail"] = Field(
        "failover",
        description="When an expert the router chose has a dead engine (restarting in the "
        "background): 'failover' asks the next best expert at once, so nothing waits for "
        "the reload, and the trace names the expert that was down; 'wait' waits for the "
        "restart; 'fail' answers the question with the expert's error.",
    )
    max_expert_calls: int = Field(
        3,
        ge=1,
        le=16,
        description="The 'conclave' strategy's budget: expert calls per question, on average "
        "over a batch (it asks the most promising first, and more only while the answers "
        "leave doubt, the most doubtful questions first).",
    )
    prior_strength: float | None = Field(
        None,
        gt=0.0,
        description="The 'conclave' strategy's estimates: how many graded answers the "
        "expert's overall accuracy counts for in each skill's estimate. Unset (the "
        "default): chosen for each expert when profiling, by leave-one-out, from 1, 4, 16 "
        "and 64 (experts alike everywhere want much shrinking, specialists little); a "
        "number fixes it for all.",
    )
    strategy: str = Field(
        "conclave",
        min_length=1,
        description="The registered strategy (orchestrator.strategies.STRATEGIES) the "
        "gateway's routed model 'conclave' answers with; evals name theirs with --strategy.",
    )
    aggregator: str = Field(
        "auto",
        description="'auto': the vote, unless an aggregator expert beats it on the "
        "aggregation benchmark beyond chance (a sign test at 5%); a registered aggregator "
        "(agents.aggregators.AGGREGATORS: "
        "'vote', the vote weighted by draws; 'weighted-vote', also by validation accuracy; "
        "or one a plug-in registers); or the name of an expert with role 'aggregator' "
        "(Mixture-of-Agents synthesis).",
    )
    embedder: Literal["all-MiniLM-L6-v2", "ngram"] = Field(
        "all-MiniLM-L6-v2",
        description="Keyword embeddings for the skill inventory: all-MiniLM-L6-v2 (the "
        "paper's), or 'ngram', hashed character trigrams with no model (tests, dry runs).",
    )


class GatewaySettings(Strict):
    """How the gateway serves; from the config's `gateway` section or the CLI."""

    host: str = Field("127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer keys; also $CONCLAVE_API_KEYS (comma-separated). "
        "None configured: no auth.",
    )
    batch_window_ms: float = Field(5.0, ge=0, le=5_000, description="Micro-batch window.")
    max_batch: int = Field(64, ge=1, description="Most requests in one batch.")
    routed_batches: int = Field(
        4,
        ge=1,
        le=32,
        description="Batches of the routed model ('conclave') in flight at once: a batch "
        "that arrives while others are still answering starts at once, so its experts' "
        "calls join the engines' running batches instead of waiting for the others to "
        "finish (1: one at a time).",
    )
    max_queue: int = Field(256, ge=1, description="Waiting requests before 429.")
    max_body_bytes: int = Field(1_000_000, ge=1_024, description="Larger bodies get 413.")
    request_timeout_s: float = Field(300.0, gt=0, description="Longer waits get 504.")
    access_log: bool = Field(
        True,
        description="Log a line per request (client, method, path, status, milliseconds, "
        "model) on the 'conclave.access' logger; `conclave serve` prints it to stderr.",
    )
    drain_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="On SIGTERM or Ctrl-C: how long the gateway keeps its socket open, "
        "answering new work 503 and /readyz 'shutting down', while the requests in flight "
        "finish, before it closes (a second signal stops at once).",
    )
    preload: bool = Field(
        True,
        description="Load the experts that fit side by side before serving, so first answers "
        "wait for no model load; the others load on demand.",
    )

    def keys(self) -> set[str]:
        env = os.environ.get("CONCLAVE_API_KEYS", "")
        return {k for k in self.api_keys if k} | {k.strip() for k in env.split(",") if k.strip()}


class RewardWeights(Strict):
    """R = (a*accuracy + b*synergy + c*efficiency) / (weights of the known terms) - d*penalty.

    accuracy: 1 if right, when a gold answer or a user's feedback says so (else the term is
    left out); synergy: 1 if the agent's answer agreed with the final one; efficiency:
    1 - tokens / token_budget, floored at 0; penalty: 1 for an error, a timeout or an
    answer that does not parse. Without a penalty R lies in [0, 1]."""

    accuracy: float = Field(1.0, ge=0.0, description="a: weight of being right.")
    synergy: float = Field(0.25, ge=0.0, description="b: weight of agreeing with the final answer.")
    efficiency: float = Field(0.05, ge=0.0, description="c: weight of using few tokens.")
    penalty: float = Field(1.0, ge=0.0, description="d: cost of a failed or unparsable answer.")
    token_budget: int = Field(1024, ge=1, description="Tokens at which efficiency reaches 0.")


class FreeAgentSettings(Strict):
    """The free-agent monitor (RLFA): score agents, release persistent underperformers,
    try a free agent in shadow mode, promote it on evidence."""

    enabled: bool = Field(
        False, description="Score agents and swap them (also on when `free_agents` names any)."
    )
    free_agents: list[str] = Field(
        default_factory=list,
        description="Experts that wait in the free-agent pool: never routed until promoted.",
    )
    weights: RewardWeights = Field(default_factory=RewardWeights, description="Reward terms.")
    window: int = Field(50, ge=1, description="Sliding window of rewards per agent.")
    min_samples: int = Field(50, ge=1, description="Rewards in the window before a release.")
    swap_rule: str = Field(
        "expectation",
        min_length=1,
        description="The registered swap rule (agents.swap_rules.SWAP_RULES) deciding "
        "releases and probation verdicts: 'expectation' (each agent judged against what "
        "its profile predicts for the questions it was given: a CUSUM test on its graded "
        "answers), 'window-mean' (an absolute floor: a window's mean reward under "
        "release_below releases), or a plug-in's. Both decide probations on one-sided "
        "bounds of the paired reward difference.",
    )
    release_below: float = Field(
        0.85,
        description="'window-mean': release an agent whose mean reward over the window is "
        "below this. Both rules: a challenger whose mean reward's lower bound clears it is "
        "promoted.",
    )
    detect_drop: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="'expectation': the fall in accuracy, below what the profile predicts "
        "for each question, that the test looks for. Smaller detects smaller drops, later "
        "and with more false alarms from a profile that is a little off.",
    )
    detect_threshold: float = Field(
        10.0,
        gt=0.0,
        description="'expectation': the CUSUM's log-likelihood-ratio threshold. With the "
        "defaults, an agent answering as its profile predicts raised about one false alarm "
        "per 50,000+ graded answers in simulation (README); one whose accuracy falls from "
        "0.9 to 0.3 is caught after about 12 graded answers (at most 24 in 60 runs).",
    )
    level_samples: int = Field(
        100,
        ge=1,
        description="'expectation': graded answers that set an agent's own level against "
        "its profile before it can be released (after a swap or an alarm, again).",
    )
    detect_window: int = Field(
        200,
        ge=1,
        description="'expectation': the latest graded answers the test judges; the older "
        "ones keep setting the agent's level.",
    )
    calibration_limit: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="'expectation': how far down an agent's own first graded answers may "
        "move its profile's predictions. A profile off for it is corrected (a 30-question "
        "validation set puts about 0.09 of noise on a 0.6 agent's accuracy; at 0.15, one "
        "agent in twenty was over-predicted past the limit and released when healthy); a "
        "fall larger than this from the start is still caught.",
    )
    flag_cooldown: int = Field(
        500,
        ge=1,
        description="Tasks before an agent flagged with no free agent to replace it is "
        "examined again (it is flagged once, not every window); a free agent that becomes "
        "available meanwhile is sent to shadow it at once.",
    )
    backoff_tasks: int = Field(
        200,
        ge=0,
        description="Tasks a demoted or rejected agent waits in the free-agent pool before "
        "it may shadow anyone; doubled with each rejection it has had.",
    )
    probes_per_task: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Validation questions asked of each serving expert per task it serves "
        "(ones it answered right when profiled, where it is strong), in the same batch, and "
        "of its challenger on probation: scored like tasks, never shown to users. Accuracy "
        "evidence when live traffic brings no gold answer or feedback; costs that many extra "
        "calls per task, each serving expert probed for at least its even share of the "
        "requests (1/n among n), and per request for a suspect (`suspect_at`) or an agent on "
        "probation.",
    )
    suspect_at: float | None = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="With probes on: a serving agent whose CUSUM reaches this fraction of "
        "`detect_threshold` (2 of 10: one or two surprising misses) is probed on every "
        "request, whether the router sends it the request or not, until the statistic falls "
        "back or decides. Evidence comes when it is needed: an agent the router stops asking "
        "once it fails would otherwise go unjudged. None: probes only with the tasks it takes.",
    )
    probation_min: int = Field(30, ge=1, description="Shadow tasks before any verdict.")
    probation_max: int = Field(200, ge=1, description="Shadow tasks before a rejection.")
    promote_margin: float = Field(
        0.0, description="The challenger must beat the incumbent's mean reward by this."
    )
    replace_within: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="'expectation': a challenger replaces an agent released on a fall from "
        "its own level unless it trails it by more than this (the one-sided bound of their "
        "paired reward difference): the release is the evidence against the incumbent, so "
        "the challenger need not also prove itself better over tasks the fall did not touch.",
    )
    confidence_z: float = Field(
        1.64, ge=0.0, description="z of the one-sided bound every verdict must clear."
    )
    audit_log: Path | None = Field(
        None, description="JSON-lines audit log; default <cache>/agents/audit.jsonl."
    )

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.free_agents)
