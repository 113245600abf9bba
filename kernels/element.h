// Element types the kernels read and write. Activations come as float32, float16 or bfloat16; every kernel
// computes in float32 and keeps states and accumulators in float32.
#pragma once

namespace carve::kernels {

enum class ElementType { f32, f16, bf16 };

inline const char* element_type_name(ElementType t) {
  return t == ElementType::f32 ? "float32" : t == ElementType::f16 ? "float16" : "bfloat16";
}

}  // namespace carve::kernels
