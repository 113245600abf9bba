// Per-position losses on next-token logits, shared by end-to-end distillation, evaluation and pretraining.
//
// KL(teacher || student) at temperature T, times T^2 (Hinton's scaling, which keeps gradient sizes independent of
// T): returned per position, so callers choose the reduction. carve averages over the real tokens of the global
// batch; mmMamba's "batchmean" divides the sum over tokens by the number of sequences instead, which weighs long
// samples more and changes the loss scale with the sequence length.
//
// With the teacher's cached top-k log-probabilities, the teacher distribution is known on k tokens and only its
// total elsewhere, the tail mass m = 1 - sum_k p_k. carve compares the two distributions over k + 1 outcomes (the k
// tokens and "any other token"): sum_k p_k log(p_k / q_k) + m log(m / q_tail), with q_tail the student's total
// probability outside the k tokens. This never exceeds the full KL (merging outcomes cannot increase it, the chain
// rule of KL), and the gap is m times the KL between the two conditional tail distributions, small when k covers
// most of the teacher's mass. Temperature other than 1 is refused for cached logits: the tail cannot be rescaled.
#pragma once

#include <torch/torch.h>

namespace carve::trainer {

// teacher_logits, student_logits [n, vocab] -> [n] float32.
torch::Tensor kl_full(const torch::Tensor& teacher_logits, const torch::Tensor& student_logits, double temperature);

// topk_logprobs [n, k] float (the teacher's log-softmax at T = 1), topk_indices [n, k] integer,
// student_logits [n, vocab] -> [n] float32.
torch::Tensor kl_topk(const torch::Tensor& topk_logprobs, const torch::Tensor& topk_indices,
                      const torch::Tensor& student_logits);

// Negative log-likelihood of targets [n] under logits [n, vocab] -> [n] float32.
torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace carve::trainer
