// Asynchronous copies from global to shared memory (cp.async, compute capability 8.0+): a thread's copies are in
// flight without holding registers, and become visible to that thread once it waits for their group.
#pragma once

namespace carve::kernels {

// One asynchronous copy of kBytes (4, 8 or 16, both addresses aligned to it) from global to shared memory, or, when
// not `real`, kBytes of zeros written without reading `from` (which must still be a valid address).
template <int kBytes>
__device__ __forceinline__ void copy_async(void* to, const void* from, bool real) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(to));
  if constexpr (kBytes == 16) {  // .cg: around L1, which these streams do not revisit
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(from), "r"(real ? 16 : 0)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(from), "n"(kBytes),
                 "r"(real ? kBytes : 0)
                 : "memory");
  }
}

// Closes the group of this thread's copies issued since the last one.
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits for this thread's cp.async copies.
__device__ __forceinline__ void staged() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Waits for this thread's cp.async copies except the kPending most recently committed groups: a pipeline of stages.
// (The "memory" clobbers keep the compiler from moving shared memory accesses across the copies and waits, which
// matters where no barrier follows them.)
template <int kPending>
__device__ __forceinline__ void staged_but() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace carve::kernels
