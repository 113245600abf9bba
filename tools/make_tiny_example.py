#!/usr/bin/env python3
"""Write the built-in tiny example: samples as JSON Lines plus projected image features as .npy files, for the
tiny llama fixture teacher (vocabulary 96, hidden 64, image token 95). Deterministic for a given --seed.

    tools/make_tiny_example.py --out DIR [--samples 48] [--seed 0]

then  tools/pack_samples.py DIR/samples.jsonl --vocab-size 96 --image-token-id 95 --out DIR/train.h5
"""
import argparse
import json
import os

import numpy as np

VOCAB, HIDDEN, IMAGE_TOKEN = 96, 64, 95


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad-token", action="store_true", help="put an id outside the vocabulary in sample 2 (tests)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "samples.jsonl"), "w") as f:
        for i in range(args.samples):
            n_text = int(rng.integers(8, 48))
            text = rng.integers(1, IMAGE_TOKEN, size=n_text).tolist()
            record = {}
            if i % 2 == 0:  # every other sample is a "VLM" sample: an image prefix of 4..8 rows
                rows = int(rng.integers(4, 9))
                np.save(os.path.join(args.out, f"image_{i:04d}.npy"),
                        (0.5 * rng.standard_normal((rows, HIDDEN))).astype(np.float32))
                record["image"] = f"image_{i:04d}.npy"
                text = [1] + [IMAGE_TOKEN] * rows + text
            if args.bad_token and i == 2:
                text[3] = VOCAB + 4
            half = len(text) // 2
            record["tokens"] = text
            record["loss_mask"] = [0] * half + [1] * (len(text) - half)  # targets: the second half ("the answer")
            f.write(json.dumps(record) + "\n")
    print(f"{args.out}/samples.jsonl: {args.samples} samples")


if __name__ == "__main__":
    main()
