"""Looking inside a served MoE model: activation profiles and masked checkpoints."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from evals.datasets import eval_items
from kernels.activations import activation_profile, summarize
from kernels.masking import mask_checkpoint

pytestmark = pytest.mark.real


def test_summarize_shares_and_distance_on_hand_made_counts():
    prof = summarize({"x": [[3, 1, 0, 0]], "y": [[0, 0, 2, 2]]})
    assert prof["shares"]["x"] == [[0.75, 0.25, 0.0, 0.0]]
    assert prof["overall"] == [[0.375, 0.125, 0.25, 0.25]]
    assert prof["distance_from_overall"] == {"x": 0.5, "y": 0.5}
    assert prof["top_expert"] == {"x": [0], "y": [2]}


def test_activation_profile_of_a_served_moe_model(tiny_models, ray_cluster):
    items = [
        it
        for it in eval_items("skillmix", "test", limit=3)
        if it.category in ("geography", "arithmetic")
    ]
    prof = activation_profile(tiny_models["moe"], items, max_tokens=4)
    cfg = json.loads((tiny_models["moe"] / "config.json").read_text())
    assert prof["layers"] == cfg["num_hidden_layers"] and prof["experts"] == 4
    assert set(prof["shares"]) == {"geography", "arithmetic"}
    for shares in prof["shares"].values():
        for row in shares:
            assert sum(row) == pytest.approx(1.0, abs=1e-3)


def test_masked_checkpoint_equals_forcing_router_logits_and_serves(
    tiny_models, tmp_path, ray_cluster
):
    from transformers import AutoModelForCausalLM

    src = tiny_models["moe"]
    dst = mask_checkpoint(src, tmp_path / "masked", [1])
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["num_local_experts"] == 3 and cfg["conclave_masked_experts"] == [1]

    # the variant computes what the original computes with expert 1's logit at -inf
    orig = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()

    def forced(self, hidden_states):  # noqa: ANN001, ANN202 - Mixtral's router, logit 1 = -inf
        logits = F.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
        logits[:, 1] = float("-inf")
        top, idx = logits.float().softmax(-1).topk(self.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True), idx

    for layer in orig.model.layers:
        layer.mlp.gate.forward = types.MethodType(forced, layer.mlp.gate)
    masked = AutoModelForCausalLM.from_pretrained(str(dst), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    with torch.no_grad():
        a, b = orig(ids).logits, masked(ids).logits
    assert torch.allclose(a, b, atol=2e-2), float((a - b).abs().max())

    # vLLM serves it, and its router chooses among the 3 experts left
    items = eval_items("skillmix", "test", limit=1)[:4]
    prof = activation_profile(dst, items, max_tokens=4)
    assert prof["experts"] == 3 and prof["layers"] == cfg["num_hidden_layers"]

    with pytest.raises(ValueError, match="leaves fewer than top-k"):
        mask_checkpoint(src, tmp_path / "bad", [0, 1, 2])
    with pytest.raises(ValueError, match="do not exist"):
        mask_checkpoint(src, tmp_path / "bad", [7])
    # its own variant is replaced; a folder of that name that is not one is refused, whole
    assert mask_checkpoint(src, dst, [2]) == dst
    assert json.loads((dst / "config.json").read_text())["conclave_masked_experts"] == [2]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a masked variant written here"):
        mask_checkpoint(src, mine, [1])
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
