#include "trainer/e2e_distill.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/log.h"
#include "comm/grad_reducer.h"
#include "comm/nccl_communicator.h"
#include "data/activation_source.h"
#include "data/cache_layout.h"
#include "data/sample_batch.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"
#include "model/student_checkpoint.h"
#include "trainer/autocast.h"
#include "trainer/distill_checkpoint.h"
#include "trainer/logit_losses.h"
#include "trainer/vlm_inputs.h"

namespace carve::trainer {

TeacherSignal parse_teacher_signal(const std::string& text, const std::string& source) {
  if (text == "online") return TeacherSignal::Online;
  if (text == "cache") return TeacherSignal::Cache;
  throw Error(source + ": '" + text + "' must be 'online' (run the teacher) or 'cache' (its cached top-k logits)");
}

std::string teacher_signal_name(TeacherSignal s) { return s == TeacherSignal::Online ? "online" : "cache"; }

namespace {

constexpr const char* kStudentFile = "student.safetensors";
std::string adam_file(int rank) {
  char name[64];
  std::snprintf(name, sizeof name, "adam_%05d.safetensors", rank);
  return name;
}

bool is_mamba_layer_param(const model::CausalLMImpl& lm, const std::string& name) {
  return model::param_role(lm, name) != model::ParamRole::Frozen;
}

// The student the run starts from, on the CPU in float32: the init folder's, or seeded from the teacher.
model::CausalLM initial_student(const E2eDistillOptions& o, model::StudentSpec& spec) {
  if (!o.init_student.empty()) {
    auto loaded = model::load_student(o.init_student, o.teacher_dir, torch::kFloat32, torch::kCPU);
    CARVE_CHECK(loaded.spec.layout.str() == o.spec.layout.str() && loaded.spec.mixer == o.spec.mixer,
                "--init ", o.init_student, " holds a ", model::mixer_kind_name(loaded.spec.mixer), " student of layout ",
                loaded.spec.layout.str(), ", this run asks for ", model::mixer_kind_name(o.spec.mixer), " with ",
                o.spec.layout.str());
    spec = loaded.spec;
    return loaded.model;
  }
  spec = o.spec;
  model::CheckpointReader reader(o.teacher_dir, o.weight_prefix);
  auto lm = model::load_causal_lm(reader);
  model::carve_student(*lm, spec, /*seed=*/true);
  return lm;
}

// Overwrites the student's Mamba-layer parameters with a checkpoint's.
void load_student_params(model::CausalLMImpl& lm, const model::SafetensorsFile& file) {
  torch::NoGradGuard no_grad;
  for (auto& item : lm.named_parameters()) {
    if (!is_mamba_layer_param(lm, item.key())) continue;
    const auto name = "param." + item.key();
    CARVE_CHECK(file.contains(name), file.path(), ": no tensor ", name, " (written for another layout or mixer?)");
    auto value = file.load(name);
    CARVE_CHECK(value.sizes() == item.value().sizes(), file.path(), ": ", name, " has shape ", value.sizes(),
                ", the student expects ", item.value().sizes());
    item.value().copy_(value);
  }
}

nlohmann::json run_identity(const E2eDistillOptions& o, int replicas) {
  return {{"stage", model::stage_name(o.stage)},
          {"layout", o.spec.layout.str()},
          {"mixer", model::mixer_kind_name(o.spec.mixer)},
          {"teacher_signal", teacher_signal_name(o.teacher_signal)},
          {"batch_tokens", o.batch_tokens},
          {"grad_accum", o.grad_accum},
          {"replicas", replicas},
          {"zero1", o.zero1},
          {"data_seed", o.data_seed},
          {"shuffle", o.shuffle}};
}

// ZeRO-1 ownership: parameters dealt to replicas greedily by size (largest first, to the least loaded), the same
// on every rank.
std::vector<int> owners_of(const std::vector<torch::Tensor>& params, int replicas) {
  std::vector<size_t> order(params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return params[a].numel() > params[b].numel(); });
  std::vector<int64_t> load(static_cast<size_t>(replicas), 0);
  std::vector<int> owner(params.size(), 0);
  for (auto i : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = static_cast<int>(least);
    load[static_cast<size_t>(least)] += params[i].numel();
  }
  return owner;
}

struct Losses {
  torch::Tensor kl, ce, layer;  // summed over the interval's micro-batches, already weighted and normalised
};

}  // namespace

E2eDistillReport run_e2e_distill(const E2eDistillOptions& o, comm::MpiCommunicator& world) {
  CARVE_CHECK(o.stage == model::Stage::Stage3 || o.stage == model::Stage::OneStage,
              "end-to-end distillation runs stage 3 or the one-stage recipe, not ", model::stage_name(o.stage));
  CARVE_CHECK(o.grad_accum >= 1, "--grad-accum must be at least 1, not ", o.grad_accum);
  CARVE_CHECK(o.batch_tokens >= 1, "--batch-tokens must be positive, not ", o.batch_tokens);
  CARVE_CHECK(o.temperature > 0, "--temperature must be positive, not ", o.temperature);
  CARVE_CHECK(o.teacher_signal == TeacherSignal::Online || o.temperature == 1.0,
              "--temperature ", o.temperature, " needs --teacher-logits online: cached top-k log-probabilities are at "
              "temperature 1 and their tail cannot be rescaled");
  CARVE_CHECK(o.kl_weight > 0 || o.ce_weight > 0 || (o.stage == model::Stage::OneStage && o.layer_weight > 0),
              "every loss weight is 0: nothing to train");
  const bool lead = world.rank() == 0;
  const bool cuda = o.device.is_cuda();
  const bool one_stage = o.stage == model::Stage::OneStage;
  const bool cached = o.teacher_signal == TeacherSignal::Cache;
  const auto start_time = Clock::now();
  const int replicas = world.size();

  model::CheckpointReader checkpoint(o.teacher_dir, o.weight_prefix);
  const auto& config = checkpoint.config();
  std::string samples_path = o.samples_path;
  if (!o.cache_dir.empty() || cached) {
    CARVE_CHECK(!o.cache_dir.empty(), "--teacher-logits cache needs --cache");
    const auto manifest = data::read_manifest(o.cache_dir);
    if (samples_path.empty()) samples_path = manifest.plan.samples_path;
    world.rank0_decides([&] {
      const auto hash = data::teacher_hash(o.teacher_dir, o.weight_prefix);
      CARVE_CHECK(hash == manifest.plan.teacher_hash, o.cache_dir, ": the cache was computed from another teacher (",
                  manifest.plan.teacher_path, "), not ", o.teacher_dir);
      CARVE_CHECK(!cached || manifest.plan.top_k > 0, o.cache_dir,
                  ": the cache holds no top-k logits (precompute with --top-k)");
    });
  }
  CARVE_CHECK(!samples_path.empty(), "end-to-end distillation reads samples: give --samples (or a --cache made from them)");

  // The device communicator outlives every tensor it reduces (declared first, destroyed last): the allocator records
  // those tensors' use on its stream, and freeing them after the stream is gone would touch a dead stream.
  auto dp = comm::make_device_communicator(world, o.device, "world");

  // The student (CPU float32 first, then the device), the teacher when it runs here.
  model::StudentSpec spec;
  auto student = initial_student(o, spec);
  const auto mamba = spec.layout.indices('M');
  CARVE_CHECK(!mamba.empty(), "layout '", spec.layout.str(), "' has no Mamba layer to distil");

  const auto identity = run_identity(o, replicas);
  const auto resume = find_resume_point(world, o.run_dir, identity);
  const std::string& resume_dir = resume.dir;
  if (!resume_dir.empty()) {
    load_student_params(*student, model::SafetensorsFile(fs::join(resume_dir, kStudentFile)));
  }

  std::vector<std::pair<std::string, torch::Tensor>> trainable;
  for (auto& item : student->named_parameters()) {
    const auto role = model::param_role(*student, item.key());
    const bool train = role != model::ParamRole::Frozen &&
                       (o.trainable_roles.empty() ? model::trains(o.stage, role) : o.trainable_roles.count(role) > 0);
    item.value().set_requires_grad(train);
    if (train) trainable.emplace_back(item.key(), item.value());
  }
  CARVE_CHECK(!trainable.empty(), "no parameter to train (check --trainable)");
  E2eDistillReport report;
  for (auto& p : student->parameters()) report.student_parameters += p.numel();
  for (auto& [n, p] : trainable) report.trainable_parameters += p.numel();
  // Parameters that are not trained are kept in the teacher's dtype on the device; trained ones in float32.
  student->to(o.device);
  if (cuda && o.teacher_dtype != torch::kFloat32) {
    torch::NoGradGuard no_grad;
    for (auto& p : student->parameters())
      if (!p.requires_grad()) p.set_data(p.to(o.teacher_dtype));
  }
  student->train();

  model::CausalLM teacher{nullptr};
  if (!cached) {
    teacher = model::load_causal_lm(checkpoint, o.teacher_dtype, o.device);
    for (auto& p : teacher->parameters()) {
      p.set_requires_grad(false);
      report.teacher_parameters += p.numel();
    }
    teacher->eval();
  }

  // Optimizer: all trainable parameters, or (zero1) this rank's share.
  std::vector<torch::Tensor> params;
  for (auto& [n, p] : trainable) params.push_back(p);
  const auto owner = o.zero1 ? owners_of(params, replicas) : std::vector<int>(params.size(), 0);
  std::vector<std::pair<std::string, torch::Tensor>> mine;
  for (size_t i = 0; i < trainable.size(); ++i)
    if (!o.zero1 || owner[i] == world.rank()) mine.push_back(trainable[i]);
  AdamW optimizer(mine, o.adam);
  const bool keeps_optimizer = o.zero1 || lead;
  if (!resume_dir.empty()) {
    // Without zero1 every rank holds the whole state; rank 0 wrote it.
    model::SafetensorsFile file(fs::join(resume_dir, adam_file(o.zero1 ? world.rank() : 0)));
    optimizer.load_state([&](const std::string& name) {
      CARVE_CHECK(file.contains(name), file.path(), ": no optimizer state ", name);
      return file.load(name).to(o.device);
    });
  }

  std::unique_ptr<comm::GradReducer> reducer;
  if (replicas > 1) reducer = std::make_unique<comm::GradReducer>(params, *dp, o.bucket_bytes);

  // Data.
  data::ActivationSourceOptions so = source_options(o, world.rank(), replicas, cuda, resume);
  so.cache_dir = cached ? o.cache_dir : "";
  so.samples_path = samples_path;
  so.logits = cached;
  if (cached && one_stage) {
    for (auto layer : mamba) so.layers.push_back(layer);
    for (auto layer : mamba) so.layers.push_back(layer + 1);
  }
  int64_t step = resume.step();
  data::ActivationSource source(so);
  const auto& sample_file = *source.samples();
  const int64_t image_token_id = sample_file.image_token_id();
  CARVE_CHECK(sample_file.vocab_size() <= config.vocab_size, samples_path, ": vocabulary of ", sample_file.vocab_size(),
              ", the teacher's is ", config.vocab_size);
  const int64_t epoch_steps = std::max<int64_t>(1, source.steps_in_epoch(0) / o.grad_accum);
  const int64_t total = o.steps > 0 ? o.steps : epoch_steps;
  check_resume_total(resume, total);
  if (!resume_dir.empty()) {
    if (lead) log::info("distill", "resuming from ", resume_dir, " at step ", step, " of ", total);
  }
  if (lead)
    log::info("distill", model::stage_name(o.stage), ": ", spec.layout.str(), " student, ", mamba.size(),
              " Mamba layers, ", report.trainable_parameters, " of ", report.student_parameters,
              " parameters trained; teacher ", teacher_signal_name(o.teacher_signal), "; ", replicas,
              " data-parallel processes", o.zero1 ? " (optimizer state sharded)" : "", "; global batch ",
              o.batch_tokens * o.grad_accum * replicas, " token slots");
  report.start_step = step;
  report.total_steps = total;
  if (step >= total) {
    if (lead) log::info("distill", "already complete: step ", step, " of ", total, " in ", o.run_dir);
    report.end_step = step;
    return report;
  }

  StepLedger ledger(o, step, total, o.batch_tokens * o.grad_accum * replicas, lead, start_time);
  StopSignals signals;
  auto scalar = [&] { return torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(o.device)); };
  Losses since_log{scalar(), scalar(), scalar()};
  Losses this_step{scalar(), scalar(), scalar()};  // added to since_log once the step is known finite
  NonFiniteCheck nonfinite(o.on_nonfinite, {"kl", "ce", "layer_l2", "gradient norm"});

  auto save_checkpoint = [&](int64_t done) {
    const auto dir = checkpoint_dir(o.run_dir, done);
    if (lead) fs::make_directories(dir);
    world.barrier();
    std::vector<std::string> files = {kStudentFile};
    for (int r = 0; r < (o.zero1 ? replicas : 1); ++r) files.push_back(adam_file(r));
    if (lead) {
      std::vector<std::pair<std::string, torch::Tensor>> tensors;
      for (auto& item : student->named_parameters())
        if (is_mamba_layer_param(*student, item.key()))
          tensors.emplace_back("param." + item.key(), item.value().to(torch::kCPU, torch::kFloat32));
      model::save_safetensors(fs::join(dir, kStudentFile), tensors, {{"format", kDistillCheckpointFormat}});
    }
    if (keeps_optimizer) {
      std::vector<std::pair<std::string, torch::Tensor>> tensors;
      for (auto& [name, t] : optimizer.state()) tensors.emplace_back(name, t.cpu());
      model::save_safetensors(fs::join(dir, adam_file(world.rank())), tensors, {{"format", kDistillCheckpointFormat}});
    }
    world.barrier();
    if (lead) {
      auto state = identity;
      state["step"] = done;
      state["total_steps"] = total;
      state["position"] = data::position_to_json(source.position());
      state["rng"] = cpu_rng_state_hex();
      state["teacher"] = o.teacher_dir;
      state["init_student"] = o.init_student;
      state["seeding"] = model::seed_method_name(spec.seeding);
      complete_checkpoint(dir, state, files);
      prune_checkpoints(o.run_dir, o.keep_checkpoints);
    }
    world.barrier();
  };

  for (; step < total; ++step) {
    const auto step_start = Clock::now();
    std::vector<data::ActivationBatch> micro;
    const double wait_before = source.stats().wait_seconds;
    auto counts = torch::zeros({3}, torch::kInt64);  // real tokens, labelled tokens, non-empty micro-batches
    std::vector<data::NextTokenTargets> targets;
    for (int64_t m = 0; m < o.grad_accum; ++m) {
      micro.push_back(source.next());
      const auto& b = micro.back();
      targets.push_back(data::next_token_targets(b.token_ids, b.seq_idx, b.valid, b.loss_mask));
      counts[0] += b.tokens;
      counts[1] += targets.back().weight.sum().to(torch::kInt64);
      counts[2] += b.tokens > 0 ? 1 : 0;
    }
    const double data_wait = source.stats().wait_seconds - wait_before;
    world.all_reduce(counts, comm::ReduceOp::Sum);
    const int64_t global_tokens = counts[0].item<int64_t>();
    const double token_norm = global_tokens > 0 ? 1.0 / static_cast<double>(global_tokens) : 0.0;
    const double label_norm = counts[1].item<int64_t>() > 0 ? 1.0 / counts[1].item<double>() : 0.0;
    const double micro_norm = counts[2].item<int64_t>() > 0 ? 1.0 / counts[2].item<double>() : 0.0;
    if (reducer) reducer->zero_grad();
    else
      for (auto& p : params) p.mutable_grad() = torch::Tensor();

    for (size_t m = 0; m < micro.size(); ++m) {
      const auto& batch = micro[m];
      if (reducer && m + 1 == micro.size()) reducer->arm();
      if (batch.tokens == 0) continue;
      const int64_t t = batch.seq_idx.size(1);
      auto tokens = batch.token_ids.to(o.device, true).view({1, t});
      auto seq_idx = batch.seq_idx.to(o.device, true);
      auto valid = batch.valid.to(o.device, true).to(torch::kFloat32);
      AutocastGuard autocast(o.device, o.autocast);
      model::ForwardOptions fo;
      fo.seq_idx = seq_idx;
      // The student's embeddings are the teacher's own, frozen and in the same dtype: one lookup serves both.
      torch::Tensor embeds;
      {
        torch::NoGradGuard no_grad;
        embeds = embed_with_images(*student, tokens, image_token_id, batch.image_rows);
      }
      // Teacher signals first, without gradients.
      torch::Tensor teacher_logits;
      std::vector<torch::Tensor> layer_in, layer_out;
      if (!cached) {
        torch::NoGradGuard no_grad;
        auto tfo = fo;
        tfo.want_layer_inputs = one_stage;
        auto r = teacher->forward_embeds(embeds, tfo);
        teacher_logits = r.logits[0];
        for (auto layer : one_stage ? mamba : std::vector<int64_t>{}) {
          layer_in.push_back(r.layer_inputs[static_cast<size_t>(layer)]);
          layer_out.push_back(static_cast<size_t>(layer + 1) < r.layer_inputs.size()
                                  ? r.layer_inputs[static_cast<size_t>(layer + 1)]
                                  : r.residual_out);
        }
      } else if (one_stage) {
        for (size_t k = 0; k < mamba.size(); ++k) {
          layer_in.push_back(batch.hidden[k].to(o.device, true).view({1, t, -1}));
          layer_out.push_back(batch.hidden[k + mamba.size()].to(o.device, true).view({1, t, -1}));
        }
      }
      if (!o.autocast || !cuda)
        for (auto* list : {&layer_in, &layer_out})
          for (auto& x : *list) x = x.to(torch::kFloat32);

      auto student_logits = student->forward_embeds(embeds, fo).logits[0];
      auto loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(o.device));
      if (o.kl_weight > 0) {
        auto kl = cached ? kl_topk(batch.topk_logprobs.to(o.device, true), batch.topk_indices.to(o.device, true),
                                   student_logits)
                         : kl_full(teacher_logits, student_logits, o.temperature);
        auto term = (kl * valid).sum() * (o.kl_weight * token_norm);
        if (const double fault = injected_loss_factor(step + 1, -1); fault != 1.0) term = term * fault;
        this_step.kl.add_(term.detach().to(torch::kFloat64));
        loss = loss + term;
      }
      if (o.ce_weight > 0) {
        const auto& tg = targets[m];
        auto nll = token_nll(student_logits, tg.targets.to(o.device, true));
        auto term = (nll * tg.weight.to(o.device, true)).sum() * (o.ce_weight * label_norm);
        this_step.ce.add_(term.detach().to(torch::kFloat64));
        loss = loss + term;
      }
      if (one_stage && o.layer_weight > 0) {
        model::MixerContext ctx;
        ctx.seq_idx = seq_idx;
        ctx.positions = model::make_positions(1, t, 0, seq_idx, o.device);
        auto mask = valid.view({1, t, 1});
        for (size_t k = 0; k < mamba.size(); ++k) {
          auto out = student->layers[static_cast<size_t>(mamba[k])]->forward(layer_in[k], ctx);
          auto diff = (out.to(torch::kFloat32) - layer_out[k].to(torch::kFloat32)) * mask;
          // The norm's gradient is diff / norm: a tiny floor keeps it finite if a layer matches exactly.
          auto norm = (diff.pow(2).sum() + 1e-12).sqrt();
          auto term = norm * (o.layer_weight * micro_norm);
          this_step.layer.add_(term.detach().to(torch::kFloat64));
          loss = loss + term;
        }
      }
      loss.backward();
    }
    const bool sync = o.profile_sync && cuda;
    if (sync) torch::cuda::synchronize();
    const auto comm_start = Clock::now();
    if (reducer) reducer->finish();
    torch::Tensor norm;
    if (o.clip > 0) {
      norm = grad_square_sum(params).sqrt();  // every replica holds the same summed gradients
      clip_by_norm(params, norm, o.clip);
    }
    // Every rank learns whether a loss term (or the gradient norm) went NaN or infinite before any update.
    nonfinite.mark(0, this_step.kl);
    nonfinite.mark(1, this_step.ce);
    nonfinite.mark(2, this_step.layer);
    if (norm.defined()) nonfinite.mark(3, norm);
    const bool skip = nonfinite.agree(world, step + 1, lead);
    if (!skip) {
      since_log.kl.add_(this_step.kl), since_log.ce.add_(this_step.ce), since_log.layer.add_(this_step.layer);
    }
    for (auto* t : {&this_step.kl, &this_step.ce, &this_step.layer}) t->zero_();
    const double lr = o.lr.at(step, total);
    if (!skip) optimizer.step(lr);
    if (o.zero1) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) dp->broadcast(params[i].data(), owner[i]);
    }
    if (sync) torch::cuda::synchronize();
    const double comm_wait = seconds_since(comm_start);

    const int64_t done = step + 1;
    ledger.record(done, seconds_since(step_start), data_wait, comm_wait, global_tokens);

    const bool stop = agree_to_stop(world, signals, ledger.steps_done_here(), o.stop_after);

    if (ledger.log_due(done, stop)) {
      const auto interval = ledger.close_interval();
      auto sums = torch::stack({since_log.kl, since_log.ce, since_log.layer}).cpu();
      world.all_reduce(sums, comm::ReduceOp::Sum);
      sums = sums / static_cast<double>(interval.steps);  // mean per step
      const double kl = sums[0].item<double>(), ce = sums[1].item<double>(), layer = sums[2].item<double>();
      const double total_loss = kl + ce + layer;
      if (report.logged_loss.empty()) report.first_loss = total_loss;
      report.last_loss = total_loss;
      report.logged_loss.emplace_back(done, total_loss);
      const double grad_norm = norm.defined() ? norm.item<double>() : 0.0;
      if (lead) {
        log::info("distill", "step ", done, "/", total, " loss ", total_loss, " (kl ", kl, o.ce_weight > 0 ? ", ce " : "",
                  o.ce_weight > 0 ? std::to_string(ce) : "", one_stage ? ", layers " : "",
                  one_stage ? std::to_string(layer) : "", ") lr ", lr, " |g| ", grad_norm, " ",
                  static_cast<int64_t>(interval.tokens_per_s), " tok/s, ETA ", ledger.eta(done));
        ledger.write_metrics(done, interval, {{"loss", total_loss}, {"kl", kl}, {"ce", ce}, {"layer_l2", layer},
                                              {"lr", lr}, {"grad_norm", grad_norm}, {"skipped_steps", nonfinite.skipped()}});
      }
      for (auto* t : {&since_log.kl, &since_log.ce, &since_log.layer}) t->zero_();
    }

    if (ledger.end_step(done, stop, signals.received() != 0, save_checkpoint)) {
      report.stopped = true;
      ++step;
      break;
    }
  }
  report.end_step = step;
  report.seconds = ledger.loop_seconds();
  report.steps = ledger.timings();
  return report;
}

void export_e2e_student(const E2eDistillOptions& o, const std::string& out_dir, bool full) {
  auto found = latest_checkpoint(o.run_dir);
  CARVE_CHECK(found, o.run_dir, ": no complete checkpoint to export");
  model::StudentSpec spec;
  auto student = initial_student(o, spec);
  load_student_params(*student, model::SafetensorsFile(fs::join(found->dir, kStudentFile)));
  model::StudentSaveOptions save;
  save.full = full;
  save.teacher_folder = std::filesystem::absolute(o.teacher_dir).lexically_normal().string();
  save.teacher_prefix = o.weight_prefix;
  model::save_student(out_dir, *student, spec, save);
}

}  // namespace carve::trainer
