"""Tiny random-weight models with a local tokenizer, for tests and the pool benchmark.

No hub is reachable, so tests build their own models: a byte-level tokenizer with a
ChatML chat template (`agents.zoo.tokenizer`) and a small Llama (or Mixtral, for the MoE
path) with random weights, saved as a folder vLLM serves like any other model. Shapes
respect the CPU attention backend (head_dim 32). Building one takes well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal


def build_tiny_model(
    path: str | Path,
    seed: int = 0,
    arch: Literal["llama", "mixtral"] = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
) -> Path:
    """Write a random-weight model folder (config, safetensors, tokenizer) atomically."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
    )
    from transformers.utils import logging as hf_logging

    from agents.zoo.tokenizer import build_byte_tokenizer

    hf_logging.disable_progress_bar()

    path = Path(path)
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build_byte_tokenizer(tmp)
        tok = AutoTokenizer.from_pretrained(str(tmp))
        common = dict(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=hidden_size // 32,
            num_key_value_heads=hidden_size // 32,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common))
        else:
            model = MixtralForCausalLM(
                MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
            )
        model.to(torch.bfloat16).save_pretrained(str(tmp))
        (tmp / "conclave_tiny.json").write_text(json.dumps({"seed": seed, "arch": arch}))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


#: Engine arguments that suit these models on vLLM's CPU build.
TINY_ENGINE_ARGS = {
    "dtype": "bfloat16",
    "enforce_eager": True,
    "max_model_len": 512,
    "kv_cache_memory_bytes": 32 * 2**20,
}
