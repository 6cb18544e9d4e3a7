"""Our generic top-level package names must not shadow the libraries we depend on."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.real


def test_transformers_does_not_take_our_kernels_for_the_hub_package():
    code = """
import kernels, transformers
from transformers.utils.import_utils import is_kernels_available
assert "vLLM's fused MoE" in (kernels.__doc__ or ''), kernels.__file__
assert not is_kernels_available(), 'transformers thinks our kernels/ is the Hub kernels package'
import transformers.integrations.hub_kernels  # imports `kernels` only when it looks like the Hub's
from transformers import LlamaConfig, LlamaForCausalLM
LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=100))
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_vllm_ray_litellm_import_cleanly_beside_our_packages():
    code = """
import orchestrator, skills, agents, workers, kernels, evals
import vllm, ray, litellm, sentence_transformers
from vllm import LLM, SamplingParams
print('ok')
"""
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_help_of_every_command_imports_no_heavy_library():
    """`conclave --help` and every command's `--help` stay instant: torch, vLLM and Ray
    (and litellm, transformers) load only inside the commands that use them."""
    code = """
import sys
from typer.main import get_command
from typer.testing import CliRunner
from orchestrator.cli import app

def paths(cmd, path):
    yield path
    for name in getattr(cmd, "commands", {}):
        yield from paths(cmd.commands[name], [*path, name])

cmds = list(paths(get_command(app), []))
assert len(cmds) > 20, cmds
codes = {" ".join(c): CliRunner().invoke(app, [*c, "--help"]).exit_code for c in cmds}
assert set(codes.values()) == {0}, codes
heavy = ("torch", "vllm", "ray", "litellm", "transformers", "sentence_transformers")
print(sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    entry = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestrator.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert entry.returncode == 0 and "Usage" in entry.stdout, entry.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in entry.stderr.splitlines()}
    assert not imported & {"torch", "vllm", "ray"}, sorted(imported & {"torch", "vllm", "ray"})
