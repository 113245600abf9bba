// RoPE of one decode token on the device, in Hugging Face's numerics (model/rope.cpp): rotate-half over the first
// rotary_dim channels of a head, cos and sin rounded to the element type, each product rounded before the sum. Shared
// by the attention's own RoPE kernel and the qkv product's epilogue (kernels/gemv.h, rope_cache), which must agree
// bit for bit.
#pragma once

#include "kernels/element.cuh"

namespace carve::kernels {

// Channels (a, b) = (j, j + rotary_dim / 2) of a head at position `pos`, as the element type: a' = a cos - b sin,
// b' = b cos + a sin, where the angle is pos / theta^(2j / rotary_dim).
template <typename T>
__device__ __forceinline__ void rope_rotate_pair(long pos, int j, int rotary_dim, float theta, float a, float b,
                                                 T& a_out, T& b_out) {
  const float inv_freq = 1.f / powf(theta, static_cast<float>(2 * j) / static_cast<float>(rotary_dim));
  const float angle = static_cast<float>(pos) * inv_freq;
  const float c = to_float(from_float<T>(cosf(angle))), s = to_float(from_float<T>(sinf(angle)));
  auto round = [](float v) { return to_float(from_float<T>(v)); };
  a_out = from_float<T>(round(a * c) + round(-b * s));
  b_out = from_float<T>(round(b * c) + round(a * s));
}

}  // namespace carve::kernels
