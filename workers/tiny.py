"""Tiny random-weight models with a local tokenizer, for tests and the pool benchmark.

No hub is reachable, so tests build their own models: a byte-level BPE tokenizer with a
ChatML chat template and a small Llama (or Mixtral, for the MoE path) with random
weights, saved as a folder vLLM serves like any other model. Shapes respect the CPU
attention backend (head_dim 32). Building one takes well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(path: str | Path) -> None:
    """A byte-level BPE with no merges: encodes any text, one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(path))


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

    path = Path(path)
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build_tokenizer(tmp)
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
