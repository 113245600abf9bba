#!/usr/bin/env python3
"""Pack samples into a carve sample file (HDF5; docs/formats.md).

Input: JSON Lines, one sample per line:
    {"tokens": [1, 17, 23, ...], "loss_mask": [0, 0, 1, ...], "image": "features/0001.npy"}
"loss_mask" is optional (all ones when no line has one); "image" is optional: a .npy file of projected image
features [rows, hidden] (float16, bfloat16 as uint16 bits, or float32, converted to --image-dtype), one row per
occurrence of --image-token-id in "tokens". Relative image paths are resolved against the JSONL file's folder.

    tools/pack_samples.py samples.jsonl --vocab-size 92553 --out train.h5 [--image-token-id 92546]

Needs h5py and numpy (Debian: python3-h5py).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np

FORMAT = "carve-samples"
VERSION = 1


def fail(message):
    sys.exit(f"pack_samples.py: {message}")


def to_bits(features, dtype, where):
    """Returns uint16 bits of features in `dtype` (bfloat16 or float16)."""
    if features.dtype == np.uint16:
        return features  # already half-precision bits, taken as --image-dtype
    if features.dtype not in (np.float16, np.float32, np.float64):
        fail(f"{where}: image features must be float16, float32 or uint16 bits, found {features.dtype}")
    if dtype == "float16":
        return features.astype(np.float16).view(np.uint16)
    # bfloat16: round float32 to nearest even on the upper 16 bits.
    f32 = features.astype(np.float32).view(np.uint32)
    rounded = f32 + 0x7FFF + ((f32 >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--image-token-id", type=int, default=-1)
    ap.add_argument("--image-dtype", choices=["bfloat16", "float16"], default="bfloat16")
    args = ap.parse_args()

    base = os.path.dirname(os.path.abspath(args.jsonl))
    tokens, offsets, masks, any_mask = [], [0], [], False
    images, image_offsets = [], [0]
    with open(args.jsonl) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{args.jsonl}:{line_no}"
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{where}: not JSON ({e})")
            ids = sample.get("tokens")
            if not isinstance(ids, list) or not ids:
                fail(f"{where}: 'tokens' must be a non-empty list of ids")
            ids = np.asarray(ids, dtype=np.int64)
            bad = np.nonzero((ids < 0) | (ids >= args.vocab_size))[0]
            if bad.size:
                fail(f"{where}: token id {ids[bad[0]]} at position {bad[0]} is outside [0, {args.vocab_size})")
            mask = sample.get("loss_mask")
            if mask is not None:
                any_mask = True
                mask = np.asarray(mask, dtype=np.uint8)
                if mask.shape != ids.shape or mask.max(initial=0) > 1:
                    fail(f"{where}: 'loss_mask' must hold one 0 or 1 per token")
            masks.append(mask if mask is not None else np.ones_like(ids, dtype=np.uint8))
            n_image_tokens = int((ids == args.image_token_id).sum()) if args.image_token_id >= 0 else 0
            rows = 0
            if "image" in sample:
                if args.image_token_id < 0:
                    fail(f"{where}: has an image but --image-token-id is not given")
                path = os.path.join(base, sample["image"])
                try:
                    feats = np.load(path)
                except OSError as e:
                    fail(f"{where}: cannot read {path} ({e})")
                if feats.ndim != 2:
                    fail(f"{path}: image features must be [rows, hidden], found shape {feats.shape}")
                if images and feats.shape[1] != images[0].shape[1]:
                    fail(f"{path}: {feats.shape[1]} values per row, earlier images had {images[0].shape[1]}")
                images.append(to_bits(feats, args.image_dtype, path))
                rows = feats.shape[0]
            if rows != n_image_tokens:
                fail(f"{where}: {n_image_tokens} image tokens (id {args.image_token_id}) but {rows} image rows")
            tokens.append(ids.astype(np.int32))
            offsets.append(offsets[-1] + len(ids))
            image_offsets.append(image_offsets[-1] + rows)
    if not tokens:
        fail(f"{args.jsonl}: no samples")

    tmp = f"{args.out}.tmp.{os.getpid()}"
    with h5py.File(tmp, "w") as out:
        out.attrs["format"] = np.bytes_(FORMAT)
        out.attrs["version"] = np.int64(VERSION)
        out.attrs["vocab_size"] = np.int64(args.vocab_size)
        out.create_dataset("tokens", data=np.concatenate(tokens))
        out.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
        if any_mask:
            out.create_dataset("loss_mask", data=np.concatenate(masks))
        if images:
            out.attrs["image_token_id"] = np.int64(args.image_token_id)
            ds = out.create_dataset("image_embeds", data=np.concatenate(images))
            ds.attrs["dtype"] = np.bytes_(args.image_dtype)
            out.create_dataset("image_offsets", data=np.asarray(image_offsets, dtype=np.int64))
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(tokens)} samples, {offsets[-1]} tokens, {image_offsets[-1]} image rows")


if __name__ == "__main__":
    main()
