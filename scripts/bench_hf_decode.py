#!/usr/bin/env python3
"""Hugging Face transformers' own decode of a llama model at HoVLE-2.6B's language-model dimensions (random bf16
weights), timed per token at batch 1 against context length: the peer figure that `carve bench decode --hf-json`
prints its teacher's ratio to. Run it in the same session as the carve bench.

The KV cache is filled with random keys and values up to each context length instead of a prefill (a step's cost
does not depend on what the cache holds); each timed step appends to it as generate() would.

usage: bench_hf_decode.py [--contexts 1024,103000] [--steps 5] [--attn eager] --json OUT.json
"""
import argparse
import json
import time

import torch
import transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


def new_cache(config):
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", default="1024,103000")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attn", default="eager", help="transformers attn_implementation (eager, sdpa)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    config = LlamaConfig(hidden_size=2048, num_hidden_layers=args.layers, num_attention_heads=16,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=92553, rms_norm_eps=1e-6,
                         rope_theta=1e6, max_position_embeddings=131072, tie_word_embeddings=False)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    head_dim = config.hidden_size // config.num_attention_heads

    results = []
    for context in [int(c) for c in args.contexts.split(",")]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cache = new_cache(config)
        for layer in range(config.num_hidden_layers):
            k = torch.randn(1, config.num_key_value_heads, context, head_dim, device="cuda", dtype=torch.bfloat16)
            cache.update(k, torch.randn_like(k), layer)
        token = torch.randint(config.vocab_size, (1, 1), device="cuda")
        with torch.no_grad():
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                position = torch.tensor([[context + i]], device="cuda")
                out = model(input_ids=token, past_key_values=cache, use_cache=True, position_ids=position,
                            cache_position=position[0])
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3 / args.steps
        results.append({"context": context, "ms_per_token": ms, "peak_bytes": torch.cuda.max_memory_allocated()})
        print(f"transformers {args.attn} decode at {context}: {ms:.1f} ms/token", flush=True)
        del cache, out
    with open(args.json, "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                   "device": torch.cuda.get_device_name(), "attn_implementation": args.attn, "results": results},
                  f, indent=2)


if __name__ == "__main__":
    main()
