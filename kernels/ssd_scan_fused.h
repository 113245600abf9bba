/*
 * The SSD forward as one sweep per head after dt_prepare: without a backward to follow (version 8, docs/kernels.md),
 * and, since version 12, training's forward too. The chunk-parallel forward writes every chunk's local state, passes
 * the states through a float32 buffer and reads them back (about 940 MB at HoVLE's sizes against 270 MB of inputs
 * and outputs); here a block per (batch row, head, slice of channels) holds its slice of the state in registers and
 * walks the sequence in steps of 64 tokens. Per step, on tensor cores:
 *   y_t = exp(L_t) C_t . S  +  sum_{s <= t in the step} (C_t . B_s) exp(L_t - L_s) dt'_s x_s  (+ D x_t, * silu(z_t))
 *   S  <- exp(L_last) S  +  sum_s exp(L_last - L_s) dt'_s x_s B_s^T
 * with L the cumsum of dt' A from the step's start (the chunk's cumsums from dt_prepare, differenced). The result does
 * not depend on the chunk length; a step never spans two chunks, since the chunk length is a multiple of 64. The
 * state enters the products rounded to 16 bits, as the chunk-parallel forward's inference path rounds it.
 * The next steps' tokens (C, B, x, z rows and the cumsums) are copied by cp.async while a step computes, and the
 * next step's C.B tiles are made, each once, spread over the block's warps (version 9), or, where heads share a group,
 * copied with the tokens from tiles made once per group by a launch before the sweep (into the forward's C.B
 * workspace, which no backward reads here). The opt-in wgmma sweep (version 10) makes each step's whole C.B in each
 * of its two warpgroups instead.
 * Where the (row, head, slice) blocks are too few to fill the GPU (long sequences, few heads), the sequence is cut
 * into spans, each swept by its own blocks: a first launch sweeps every span but the last from a zero state for its
 * local final state alone, and the second starts each span from the state stitched from those (version 9).
 * Training's forward (y_ssm kept, version 12) also writes y_ssm and the state entering each chunk, which the backward
 * reads, and takes its computed operands (the state, the weighted C.B values and x rows) through the products in two
 * 16-bit parts, as the chunk-parallel training forward does (ssd_scan_tc.cuh's kParts says why).
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/ssd_scan.h"

namespace carve::kernels {

// Whether the sweep takes this forward, and on which products (chunk_parallel where it does not): 16-bit, no packed
// samples, chunk length a multiple of 64, state size 64, 80 or 128, head dim 80 or a multiple of 64, a
// block's shared memory within the device's (state size 128 with head dim 80 is not), 16-byte aligned rows, and
// enough (row, head, slice, span) blocks to fill half the GPU (spans are at most one per chunk; with few blocks the
// chunk-parallel kernels are faster).
// CARVE_SSD_FUSED=0 turns it off (side-by-side benchmarks); =1 takes it at any block count (tests).
// CARVE_SSD_SPANS=N asks for N spans per (row, head) (at most one per chunk and 64-token step).
// CARVE_SSD_SWEEP_CB=0 makes the C.B tiles in each head's sweep where heads share a group (comparisons).
// CARVE_SSD_WGMMA=1 runs it on wgmma for 64-channel slices on compute capability 9.0, where the loaded code was built
// for sm_90a (version 10, slower so far), but for training's forward, which runs on mma.sync.
// CARVE_SSD_SWEEP_TRAINING=0 keeps training's forward on the chunk-parallel kernels (comparisons).
SsdForwardKernels ssd_fused_forward_kernels(const SsdScanForward& f);
// The floats of f.span_states a training forward in spans needs (0 where it takes no spans or no sweep).
size_t ssd_fused_forward_span_floats(const SsdScanForward& f);
// Launches the sweep where it takes this forward (as ssd_fused_forward_kernels decides) and says whether it did;
// f.dtp and f.cum must hold dt_prepare's results. Without y_ssm, f.states holds the spans' local states and
// log-decays where there are spans, and is otherwise not written; where heads share a group, f.cb holds the groups'
// C.B tiles in the sweep's own layout. With y_ssm, f.states holds each chunk's entering state, f.span_states the
// spans' local states, and f.cb is not written (the caller makes C.B for the backward).
bool ssd_fused_forward(const SsdScanForward& f, cudaStream_t stream);

// The backward's state gradient as one reverse sweep per (row, head, slice) with the gradient on chip (version 13),
// where it takes this backward (16-bit on the tensor-core kernels, which the caller checks; no packed samples; the
// forward sweep's sizes; enough blocks): writes dstates (the gradient of the state leaving each chunk), adds each
// chunk's <G, S> to end_term (zeroed by the caller) and writes dinitial_state, instead of the chunk-level entering-
// state gradient and the state pass. Where its block fits in shared memory (not at state size 128 with head dim 80)
// the same sweep also writes dx and adds x . U to ddt_u (zeroed by the caller), instead of the pair kernel's dx
// (version 14). Says which it did (none where it does not take this backward). CARVE_SSD_SWEEP_GRAD=0 turns it off,
// CARVE_SSD_SWEEP_DX=0 keeps dx out of it (comparisons).
// In spans where the (row, head, slice) blocks are few (as the forward sweep), with b.span_grads holding
// ssd_fused_state_grad_span_floats floats.
SsdBackwardSweeps ssd_fused_state_grad(const SsdScanBackward& b, cudaStream_t stream);
// What ssd_fused_state_grad would do with this backward.
SsdBackwardSweeps ssd_fused_backward_sweeps(const SsdScanBackward& b);
// The floats of b.span_grads a backward of this shape needs (0 where it takes no spans).
size_t ssd_fused_state_grad_span_floats(const SsdScanShape& s);

}  // namespace carve::kernels
