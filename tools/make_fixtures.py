#!/usr/bin/env python3
"""Make the tiny teacher fixtures that carve's tests compare against, with Hugging Face transformers.

Run on a machine with torch and transformers (the GPU host):
    python3 tools/make_fixtures.py --out tests/fixtures/teachers

For each family transformers ships (llama, qwen2, phi) it builds a random-weight model with 3 layers, hidden 64
(GQA where the family has it), saves it with save_pretrained (llama also sharded), and writes expected.safetensors:
  input_ids        [2, 12] int64
  logits           [2, 12, vocab] float32
  layer_input.<i>  [2, 12, hidden] float32, the residual stream entering decoder layer i
  pre_o.<i>        [2, 12, heads * head_dim] float32, the attention output before the output projection
  final_hidden     [2, 12, hidden] float32, after the final norm
  greedy           [2, 6] int64, generate()'s greedy continuation of input_ids
InternLM2 is not in transformers: the llama fixture is rewritten into InternLM2's names and packed wqkv, and the
llama's expected outputs are copied, since the math is the same.
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
              max_position_embeddings=256)


def families():
    return {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  dict(COMMON, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)),
        "llama_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       dict(COMMON, num_attention_heads=4, num_key_value_heads=4, rope_theta=500000.0,
                            rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True, head_dim=24)),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                  dict(COMMON, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)),
        "phi": (transformers.PhiConfig, transformers.PhiForCausalLM,
                dict(COMMON, num_attention_heads=4, partial_rotary_factor=0.4, layer_norm_eps=1e-5,
                     hidden_act="gelu_new", tie_word_embeddings=False)),
    }


def record(model, input_ids):
    """Run the model once, capturing each decoder layer's input and each attention's input to its o_proj."""
    layer_inputs, pre_o, final = {}, {}, {}
    hooks = []
    layers = model.model.layers
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: layer_inputs.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).detach().clone()),
            with_kwargs=True))
        attn = layer.self_attn
        out_proj = attn.o_proj if hasattr(attn, "o_proj") else attn.dense
        hooks.append(out_proj.register_forward_pre_hook(
            lambda m, args, i=i: pre_o.__setitem__(i, args[0].detach().clone())))
    hooks.append(model.lm_head.register_forward_pre_hook(
        lambda m, args: final.__setitem__("h", args[0].detach().clone())))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    for h in hooks:
        h.remove()
    out = {"input_ids": input_ids, "logits": logits.contiguous(), "final_hidden": final["h"].float().contiguous()}
    for i in range(len(layers)):
        out[f"layer_input.{i}"] = layer_inputs[i].float().contiguous()
        out[f"pre_o.{i}"] = pre_o[i].float().reshape(input_ids.shape[0], input_ids.shape[1], -1).contiguous()
    # Greedy continuation as transformers' generate() makes it (with its KV cache): carve's decoder must agree.
    # No end-of-sequence token: the continuation runs its full length and is pure argmax.
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        greedy = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=6, pad_token_id=0)
    out["greedy"] = greedy[:, input_ids.shape[1]:].contiguous()
    return out


def to_internlm2(llama_dir, out_dir, cfg):
    """Rewrite a llama checkpoint into InternLM2 names with q, k, v packed per KV head as [q x groups, k, v]."""
    os.makedirs(out_dir, exist_ok=True)
    w = load_file(os.path.join(llama_dir, "model.safetensors"))
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // h
    g = h // kv
    out = {"model.tok_embeddings.weight": w["model.embed_tokens.weight"], "model.norm.weight": w["model.norm.weight"],
           "output.weight": w["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q = w[p + "self_attn.q_proj.weight"].view(kv, g, d, -1)
        k = w[p + "self_attn.k_proj.weight"].view(kv, 1, d, -1)
        v = w[p + "self_attn.v_proj.weight"].view(kv, 1, d, -1)
        out[p + "attention.wqkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, q.shape[-1]).contiguous()
        out[p + "attention.wo.weight"] = w[p + "self_attn.o_proj.weight"]
        out[p + "attention_norm.weight"] = w[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[p + "feed_forward.w1.weight"] = w[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = w[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = w[p + "mlp.down_proj.weight"]
    save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "bias": False,
              "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
              "num_hidden_layers": cfg["num_hidden_layers"], "num_attention_heads": h, "num_key_value_heads": kv,
              "vocab_size": cfg["vocab_size"], "rms_norm_eps": cfg["rms_norm_eps"], "rope_theta": cfg["rope_theta"],
              "rope_scaling": None, "hidden_act": "silu", "max_position_embeddings": cfg["max_position_embeddings"],
              "tie_word_embeddings": False}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(llama_dir, "expected.safetensors"), os.path.join(out_dir, "expected.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=gen)
    for seed, (name, (config_cls, model_cls, kwargs)) in enumerate(families().items()):
        torch.manual_seed(100 + seed)
        config = config_cls(**kwargs)
        model = model_cls(config).float().eval()
        # Random init leaves norms at 1 and biases at 0: perturb them so the tests see every parameter.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname or pname.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        folder = os.path.join(args.out, name)
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder, safe_serialization=True)
        save_file(record(model, input_ids), os.path.join(folder, "expected.safetensors"))
        if name == "llama":
            sharded = os.path.join(args.out, "llama_sharded")
            shutil.rmtree(sharded, ignore_errors=True)
            model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
            shutil.copy(os.path.join(folder, "expected.safetensors"), sharded)
            to_internlm2(folder, os.path.join(args.out, "internlm2"), kwargs)
        for extra in ("generation_config.json",):
            for f in (folder,):
                if os.path.exists(os.path.join(f, extra)):
                    os.remove(os.path.join(f, extra))
    with open(os.path.join(args.out, "VERSIONS"), "w") as f:
        f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n")
    print("fixtures written to", args.out)


if __name__ == "__main__":
    main()
