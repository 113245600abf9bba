#include "trainer/pretrain.h"

#include "base/error.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/progress.h"
#include "data/activation_source.h"
#include "data/sample_batch.h"
#include "data/samples.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"
#include "trainer/evaluate.h"
#include "trainer/logit_losses.h"
#include "trainer/vlm_inputs.h"

namespace carve::trainer {

PretrainReport pretrain_teacher(const PretrainOptions& o) {
  CARVE_CHECK(o.steps >= 1, "--steps must be at least 1");
  data::SampleFile file(o.samples_path);
  CARVE_CHECK(file.vocab_size() <= o.dims.vocab, o.samples_path, ": vocabulary of ", file.vocab_size(),
              ", the model's (--dims) has ", o.dims.vocab);
  CARVE_CHECK(!file.has_images() || file.image_hidden() == o.dims.hidden, o.samples_path, ": image features of width ",
              file.image_hidden(), ", the model's hidden size (--dims) is ", o.dims.hidden);
  // The initial weights and config.json are a random teacher's; training replaces the weights.
  auto config_json = model::random_teacher_config(o.dims, torch::kFloat32, o.seed);
  auto lm = model::make_random_teacher(config_json, o.seed);
  lm->train();
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (auto& item : lm->named_parameters()) params.emplace_back(item.key(), item.value());
  AdamW optimizer(params, o.adam);
  std::vector<torch::Tensor> tensors;
  for (auto& p : params) tensors.push_back(p.second);

  ProgressMeter progress("pretrain", "steps", o.steps, 5.0);
  PretrainReport report;
  int64_t step = 0, epoch = 0;
  double loss_since = 0;
  int64_t steps_since = 0;
  auto evaluate = [&] {
    EvalOptions eo;
    eo.samples_path = o.eval_path;
    eo.batch_tokens = o.batch_tokens;
    eo.max_samples = o.eval_samples;
    auto scores = evaluate_models(*lm, "teacher", {}, eo);
    lm->train();
    return scores[0];
  };
  while (step < o.steps) {
    const auto batches = data::epoch_batches(file.offsets(), o.batch_tokens, o.seed, epoch++, /*shuffle=*/true);
    for (const auto& ids : batches) {
      if (step >= o.steps) break;
      auto b = data::read_sample_batch(file, ids, o.batch_tokens);
      auto t = data::next_token_targets(b.token_ids, b.seq_idx, b.valid, b.loss_mask);
      model::ForwardOptions fo;
      fo.seq_idx = b.seq_idx;
      auto embeds = embed_with_images(*lm, b.token_ids, file.image_token_id(), b.image_rows);
      auto logits = lm->forward_embeds(embeds, fo).logits[0];
      auto loss = (token_nll(logits, t.targets) * t.weight).sum() / t.weight.sum().clamp_min(1.0);
      for (auto& p : tensors) p.mutable_grad() = torch::Tensor();
      loss.backward();
      if (o.clip > 0) clip_by_norm(tensors, grad_square_sum(tensors).sqrt(), o.clip);
      optimizer.step(o.lr.at(step, o.steps));
      ++step;
      loss_since += loss.item<double>();
      ++steps_since;
      progress.advance(1, "step " + std::to_string(step) + "/" + std::to_string(o.steps));
      if (step % o.eval_every == 0 || step == o.steps) {
        report.final_loss = loss_since / static_cast<double>(steps_since);
        std::string accuracy;
        if (!o.eval_path.empty()) {
          report.eval_exact_match = evaluate().exact_match;
          accuracy = ", eval exact match " + std::to_string(report.eval_exact_match);
        }
        log::info("pretrain", "step ", step, "/", o.steps, " loss ", report.final_loss, accuracy);
        loss_since = 0;
        steps_since = 0;
      }
    }
  }

  config_json.erase("carve_random_teacher");
  config_json["carve_pretrain"] = {{"command", o.command},
                                   {"steps", o.steps},
                                   {"seed", o.seed},
                                   {"final_train_loss", report.final_loss},
                                   {"eval_exact_match", report.eval_exact_match}};
  fs::make_directories(o.out_dir);
  torch::NoGradGuard no_grad;
  model::save_safetensors(fs::join(o.out_dir, "model.safetensors"), model::hf_state_dict(*lm), {{"format", "pt"}});
  fs::write_file_atomic(fs::join(o.out_dir, "config.json"), config_json.dump(2) + "\n");
  return report;
}

}  // namespace carve::trainer
