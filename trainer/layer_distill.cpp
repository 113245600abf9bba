#include "trainer/layer_distill.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <sstream>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/log.h"
#include "base/text.h"
#include "comm/grad_reducer.h"
#include "comm/nccl_communicator.h"
#include "comm/process_grid.h"
#include "data/activation_source.h"
#include "data/cache_layout.h"
#include "model/attention.h"
#include "model/checkpoint.h"
#include "model/hf_weights.h"
#include "model/safetensors.h"
#include "model/seeding.h"
#include "model/student_checkpoint.h"
#include "trainer/autocast.h"
#include "trainer/distill_checkpoint.h"
#include "trainer/run_control.h"

#include <torch/cuda.h>

namespace carve::trainer {
namespace {

// One trained layer: the teacher's input norm and attention (frozen) and the student mixer.
struct LayerUnit {
  int64_t layer = 0;
  model::Norm norm{nullptr};
  std::shared_ptr<model::AttentionImpl> teacher;
  std::shared_ptr<model::Mixer> student;
  std::vector<std::pair<std::string, torch::Tensor>> trainable;  // mixer-relative names
  std::unique_ptr<AdamW> optimizer;
  int64_t width = 0;            // heads x head dim: the pre-o_proj width the loss averages over
  torch::Tensor sse_since_log;  // sum of squared errors since the last log line, on the device
  torch::Tensor sse_step;       // this step's, added to sse_since_log once the step is known finite
};

void load_mixer(model::Mixer& mixer, const model::SafetensorsFile& file) {
  torch::NoGradGuard no_grad;
  for (auto& item : mixer.named_parameters()) {
    const auto name = "mixer." + item.key();
    CARVE_CHECK(file.contains(name), file.path(), ": no tensor ", name, " (written by a different mixer or layout?)");
    auto value = file.load(name);
    CARVE_CHECK(value.sizes() == item.value().sizes(), file.path(), ": ", name, " has shape ", value.sizes(),
                ", the mixer expects ", item.value().sizes());
    item.value().copy_(value);
  }
}

// What a checkpoint must agree on to be resumed by this run; a difference names the field.
nlohmann::json run_identity(const LayerDistillOptions& o, const comm::ProcessGrid& grid) {
  return {{"stage", model::stage_name(o.stage)},
          {"layout", o.spec.layout.str()},
          {"mixer", model::mixer_kind_name(o.spec.mixer)},
          {"batch_tokens", o.batch_tokens},
          {"grad_accum", o.grad_accum},
          {"replicas", grid.replicas},
          {"data_seed", o.data_seed},
          {"shuffle", o.shuffle}};
}

}  // namespace

std::vector<int64_t> trained_layers(const model::StudentSpec& spec) { return spec.layout.indices('M'); }

void export_layer_student(const LayerDistillOptions& o, const std::string& out_dir) {
  auto found = latest_checkpoint(o.run_dir);
  CARVE_CHECK(found, o.run_dir, ": no complete checkpoint to export");
  model::CheckpointReader checkpoint(o.teacher_dir, o.weight_prefix);
  auto lm = model::load_causal_lm(checkpoint);
  model::carve_student(*lm, o.spec, /*seed=*/false);
  for (auto layer : trained_layers(o.spec))
    load_mixer(*lm->layers[static_cast<size_t>(layer)]->mixer,
               model::SafetensorsFile(fs::join(found->dir, layer_file_name(layer))));
  model::StudentSaveOptions save;
  save.teacher_folder = std::filesystem::absolute(o.teacher_dir).lexically_normal().string();
  save.teacher_prefix = o.weight_prefix;
  model::save_student(out_dir, *lm, o.spec, save);
}

LayerDistillReport run_layer_distill(const LayerDistillOptions& o, comm::MpiCommunicator& world) {
  CARVE_CHECK(o.stage == model::Stage::Stage1 || o.stage == model::Stage::Stage2,
              "layer-wise distillation runs stage 1 or 2, not ", model::stage_name(o.stage));
  CARVE_CHECK(o.grad_accum >= 1, "--grad-accum must be at least 1, not ", o.grad_accum);
  CARVE_CHECK(o.batch_tokens >= 1, "--batch-tokens must be positive, not ", o.batch_tokens);
  const bool lead = world.rank() == 0;
  const bool cuda = o.device.is_cuda();
  const auto start_time = Clock::now();

  // The grid, and everything that could be wrong with the inputs, before any work.
  const auto layers = trained_layers(o.spec);
  CARVE_CHECK(!layers.empty(), "layout '", o.spec.layout.str(), "' has no Mamba layer to distil");
  const auto grid = comm::ProcessGrid::make(world.size(), world.rank(), o.layer_groups, layers,
                                            std::vector<double>(layers.size(), 1.0));
  const auto& mine = grid.my_layers();
  model::CheckpointReader checkpoint(o.teacher_dir, o.weight_prefix);
  const auto& config = checkpoint.config();
  const auto manifest = data::read_manifest(o.cache_dir);
  world.rank0_decides([&] {
    CARVE_CHECK(manifest.plan.hidden_size == config.hidden_size && manifest.plan.num_layers == config.num_layers,
                o.cache_dir, ": the cache was made for a teacher with ", manifest.plan.num_layers, " layers of width ",
                manifest.plan.hidden_size, ", --teacher ", o.teacher_dir, " has ", config.num_layers, " of width ",
                config.hidden_size);
    const auto hash = data::teacher_hash(o.teacher_dir, o.weight_prefix);
    CARVE_CHECK(hash == manifest.plan.teacher_hash, o.cache_dir, ": the cache was computed from another teacher (",
                manifest.plan.teacher_path, ", hash ", manifest.plan.teacher_hash, "), not ", o.teacher_dir,
                " (hash ", hash, ")");
    for (auto layer : layers)
      CARVE_CHECK(std::find(manifest.plan.layers.begin(), manifest.plan.layers.end(), layer) != manifest.plan.layers.end(),
                  o.cache_dir, ": the cache holds no input of layer ", layer, " (it stores layers ",
                  join_integers(manifest.plan.layers), "); precompute with --layers all");
  });
  if (lead)
    log::info("distill", model::stage_name(o.stage), ": ", layers.size(), " layers on ", grid.world, " processes = ",
              grid.groups, " layer groups x ", grid.replicas, " replicas; global batch ",
              o.batch_tokens * o.grad_accum * grid.replicas, " token slots");
  log::info("distill", "group ", grid.group, " replica ", grid.replica, ": layers ", join_integers(mine), " on ",
            o.device.str());

  // Communicators: replicas of a group (gradients), and the world on the device (the clipping norm).
  auto dp_host = world.split_mpi(grid.group, grid.replica, "data-parallel group " + std::to_string(grid.group));
  auto dp = comm::make_device_communicator(*dp_host, o.device, dp_host->name());
  auto world_dev = comm::make_device_communicator(world, o.device, "world");

  // Where to start: this run's newest checkpoint, else (stage 2) stage 1's, else the seeding.
  const auto identity = run_identity(o, grid);
  const auto resume = find_resume_point(world, o.run_dir, identity);
  const std::string& resume_dir = resume.dir;
  std::string init_dir;
  if (resume_dir.empty() && o.stage == model::Stage::Stage2) {
    CARVE_CHECK(!o.init_dir.empty(), "stage 2 starts from stage 1's result: give --init STAGE1_FOLDER");
    init_dir = world.broadcast_text(lead ? [&] {
      auto found = latest_checkpoint(o.init_dir);
      return found ? found->dir : std::string();
    }() : std::string());
    CARVE_CHECK(!init_dir.empty(), "--init ", o.init_dir, ": no complete stage-1 checkpoint there");
    auto init_state = read_json_file(fs::join(init_dir, "state.json"));
    world.rank0_decides([&] {
      CARVE_CHECK(init_state.at("layout") == o.spec.layout.str() &&
                      init_state.at("mixer") == model::mixer_kind_name(o.spec.mixer),
                  "--init ", init_dir, " holds a ", init_state.at("mixer").get<std::string>(), " student of layout ",
                  init_state.at("layout").get<std::string>(), ", this run asks for ",
                  model::mixer_kind_name(o.spec.mixer), " with ", o.spec.layout.str());
      if (init_state.at("step") != init_state.at("total_steps"))
        log::info("distill", "warning: ", init_dir, " is stage 1 stopped at step ", init_state.at("step").dump(),
                  " of ", init_state.at("total_steps").dump());
    });
  }

  // The layers: teacher parts from the checkpoint, student mixers seeded or loaded.
  std::vector<LayerUnit> units;
  {
    auto teacher = model::load_causal_lm(checkpoint);
    for (auto layer : mine) {
      LayerUnit u;
      u.layer = layer;
      auto& decoder = teacher->layers[static_cast<size_t>(layer)];
      u.norm = decoder->input_norm;
      u.teacher = std::dynamic_pointer_cast<model::AttentionImpl>(decoder->mixer);
      CARVE_CHECK(u.teacher, o.teacher_dir, ": layer ", layer, " has no attention");
      u.student = model::make_ssm_mixer(config, o.spec);
      std::unique_ptr<model::SafetensorsFile> resumed;
      if (!resume_dir.empty()) {
        resumed = std::make_unique<model::SafetensorsFile>(fs::join(resume_dir, layer_file_name(layer)));
        load_mixer(*u.student, *resumed);
      } else if (!init_dir.empty()) {
        load_mixer(*u.student, model::SafetensorsFile(fs::join(init_dir, layer_file_name(layer))));
      } else {
        model::seed_mixer(*u.student, *u.teacher, o.spec.seeding, o.spec.init_seed + static_cast<uint64_t>(layer));
      }
      u.width = u.teacher->num_heads * u.teacher->head_dim;
      u.norm->to(o.device, o.teacher_dtype);
      u.teacher->to(o.device, o.teacher_dtype);
      for (auto& p : u.norm->parameters()) p.set_requires_grad(false);
      for (auto& p : u.teacher->parameters()) p.set_requires_grad(false);
      u.student->to(o.device, torch::kFloat32);  // master weights
      for (auto& item : u.student->named_parameters()) {
        const bool train = model::trains(o.stage, model::mixer_param_role(item.key()));
        item.value().set_requires_grad(train);
        if (train) u.trainable.emplace_back(item.key(), item.value());
      }
      u.optimizer = std::make_unique<AdamW>(u.trainable, o.adam);
      if (resumed) {
        u.optimizer->load_state([&](const std::string& name) {
          CARVE_CHECK(resumed->contains("adam." + name), resumed->path(), ": no optimizer state adam.", name);
          return resumed->load("adam." + name).to(o.device);
        });
      }
      u.sse_since_log = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(o.device));
      u.sse_step = torch::zeros_like(u.sse_since_log);
      units.push_back(std::move(u));
    }
  }  // the rest of the teacher is released here
  std::vector<torch::Tensor> params;
  for (auto& u : units)
    for (auto& [name, p] : u.trainable) params.push_back(p);
  std::unique_ptr<comm::GradReducer> reducer;
  if (dp->size() > 1) reducer = std::make_unique<comm::GradReducer>(params, *dp, o.bucket_bytes);

  // Data: this group's layer streams, this replica's share of the batches.
  data::ActivationSourceOptions so = source_options(o, grid.replica, grid.replicas, cuda, resume);
  so.cache_dir = o.cache_dir;
  so.layers = mine;
  int64_t step = resume.step();
  data::ActivationSource source(so);
  const int64_t epoch_steps = std::max<int64_t>(1, source.steps_in_epoch(0) / o.grad_accum);
  const int64_t total = o.steps > 0 ? o.steps : epoch_steps;
  check_resume_total(resume, total);
  if (!resume_dir.empty()) {
    if (lead) log::info("distill", "resuming from ", resume_dir, " at step ", step, " of ", total);
  }

  LayerDistillReport report;
  report.start_step = step;
  report.total_steps = total;
  if (step >= total) {
    if (lead) log::info("distill", "already complete: step ", step, " of ", total, " in ", o.run_dir);
    report.end_step = step;
    return report;
  }

  const int64_t n_layers = static_cast<int64_t>(layers.size());
  StepLedger ledger(o, step, total, o.batch_tokens * o.grad_accum * grid.replicas, lead, start_time);
  // The non-finite check's sources: every trained layer of the world, then the gradient norm.
  std::vector<std::string> sources;
  for (auto layer : layers) sources.push_back("layer " + std::to_string(layer));
  sources.push_back("gradient norm");
  NonFiniteCheck nonfinite(o.on_nonfinite, sources);
  auto layer_source = [&](int64_t layer) {
    return static_cast<size_t>(std::find(layers.begin(), layers.end(), layer) - layers.begin());
  };
  StopSignals signals;

  auto save_checkpoint = [&](int64_t done) {
    const auto dir = checkpoint_dir(o.run_dir, done);
    if (lead) fs::make_directories(dir);
    world.barrier();
    std::vector<std::string> files;
    for (auto layer : layers) files.push_back(layer_file_name(layer));
    if (grid.replica == 0) {
      for (auto& u : units) {
        std::vector<std::pair<std::string, torch::Tensor>> tensors;
        for (auto& item : u.student->named_parameters()) tensors.emplace_back("mixer." + item.key(), item.value().cpu());
        for (auto& [name, t] : u.optimizer->state()) tensors.emplace_back("adam." + name, t.cpu());
        model::save_safetensors(fs::join(dir, layer_file_name(u.layer)), tensors,
                                {{"format", kDistillCheckpointFormat}, {"layer", std::to_string(u.layer)}});
      }
    }
    world.barrier();
    if (lead) {
      auto state = identity;
      state["step"] = done;
      state["total_steps"] = total;
      state["position"] = data::position_to_json(source.position());
      state["rng"] = cpu_rng_state_hex();
      state["seeding"] = model::seed_method_name(o.spec.seeding);
      state["teacher"] = o.teacher_dir;
      state["cache"] = o.cache_dir;
      state["layers"] = layers;
      complete_checkpoint(dir, state, files);
      prune_checkpoints(o.run_dir, o.keep_checkpoints);
    }
    world.barrier();
  };

  for (; step < total; ++step) {
    const auto step_start = Clock::now();
    std::vector<data::ActivationBatch> micro;
    int64_t local_tokens = 0;
    const double wait_before = source.stats().wait_seconds;
    for (int64_t m = 0; m < o.grad_accum; ++m) {
      micro.push_back(source.next());
      local_tokens += micro.back().tokens;
    }
    const double data_wait = source.stats().wait_seconds - wait_before;
    // Every member of a group trains on the same global batch; its real-token count normalises the loss.
    const int64_t global_tokens = dp_host->all_reduce_value(local_tokens, comm::ReduceOp::Sum);
    const double scale = global_tokens > 0 ? 1000.0 / static_cast<double>(global_tokens * n_layers) : 0.0;
    if (reducer) reducer->zero_grad();
    else
      for (auto& p : params) p.mutable_grad() = torch::Tensor();

    for (size_t m = 0; m < micro.size(); ++m) {
      const auto& batch = micro[m];
      if (reducer && m + 1 == micro.size()) reducer->arm();
      if (batch.tokens == 0) continue;
      const int64_t t = batch.seq_idx.size(1);
      auto seq_idx = batch.seq_idx.to(o.device, /*non_blocking=*/true);
      auto valid = batch.valid.to(o.device, /*non_blocking=*/true).to(torch::kFloat32).view({1, t, 1});
      auto positions = model::make_positions(1, t, 0, seq_idx, o.device);
      torch::Tensor loss;
      for (size_t k = 0; k < units.size(); ++k) {
        auto& u = units[k];
        auto x = batch.hidden[k].to(o.device, /*non_blocking=*/true).view({1, t, -1});
        if (!cuda) x = x.to(torch::kFloat32);
        AutocastGuard autocast(o.device, o.autocast);
        torch::Tensor target, pred, u_in;
        model::MixerContext ctx;
        ctx.positions = positions;
        ctx.seq_idx = seq_idx;
        ctx.skip_output_projection = true;
        {
          torch::NoGradGuard no_grad;
          u_in = u.norm->forward(x);
          ctx.pre_output = &target;
          u.teacher->forward(u_in, ctx);
        }
        ctx.pre_output = &pred;
        u.student->forward(u_in, ctx);
        auto diff = (pred.to(torch::kFloat32) - target.to(torch::kFloat32)) * valid;
        auto sse = diff.pow(2).sum() * (injected_loss_factor(step + 1, u.layer) / static_cast<double>(u.width));
        u.sse_step.add_(sse.detach());
        loss = loss.defined() ? loss + sse * scale : sse * scale;
      }
      loss.backward();
    }
    // Profiling: start and end the communication with an idle device, so its time is what the step could not hide.
    const bool sync = o.profile_sync && cuda;
    if (sync) torch::cuda::synchronize();
    const auto comm_start = Clock::now();
    if (reducer) reducer->finish();
    torch::Tensor norm;
    if (o.clip > 0) {
      auto sq = grad_square_sum(params).to(o.device).view({1});
      // Every replica of a group holds the same (reduced) gradients: the world sum counts each group R times.
      if (world_dev->size() > 1) {
        world_dev->all_reduce(sq, comm::ReduceOp::Sum);
        sq = sq / static_cast<double>(grid.replicas);
      }
      norm = sq.sqrt();  // [1]
      clip_by_norm(params, norm, o.clip);
    }
    if (sync) torch::cuda::synchronize();
    const double comm_wait = seconds_since(comm_start);
    // Every rank learns whether any layer's loss (or the gradient norm) went NaN or infinite before any update.
    for (auto& u : units) nonfinite.mark(layer_source(u.layer), u.sse_step);
    if (norm.defined()) nonfinite.mark(layers.size(), norm);
    const bool skip = nonfinite.agree(world, step + 1, lead);
    const double lr = o.lr.at(step, total);
    for (auto& u : units) {
      if (!skip) {
        u.optimizer->step(lr);
        u.sse_since_log.add_(u.sse_step);
      }
      u.sse_step.zero_();
    }

    const int64_t done = step + 1;
    ledger.record(done, seconds_since(step_start), data_wait, comm_wait, global_tokens);

    // Agree on stopping: a signal on any rank stops every rank at the same step.
    const bool stop = agree_to_stop(world, signals, ledger.steps_done_here(), o.stop_after);

    if (ledger.log_due(done, stop)) {
      const auto interval = ledger.close_interval();
      // Per-layer losses of the whole world: each group fills its layers, replicas add their shares.
      auto sums = torch::zeros({static_cast<int64_t>(layers.size())}, torch::kFloat64);
      for (auto& u : units) {
        const auto at = std::find(layers.begin(), layers.end(), u.layer) - layers.begin();
        sums[at] = u.sse_since_log.item<double>();
        u.sse_since_log.zero_();
      }
      world.all_reduce(sums, comm::ReduceOp::Sum);
      nlohmann::json layer_loss = nlohmann::json::object();
      double mean = 0;
      std::ostringstream per_layer;
      for (size_t i = 0; i < layers.size(); ++i) {
        const double l = 1000.0 * sums[static_cast<int64_t>(i)].item<double>() / std::max<int64_t>(1, interval.tokens);
        layer_loss[std::to_string(layers[i])] = l;
        mean += l / static_cast<double>(layers.size());
        per_layer << " L" << layers[i] << " " << l;
        if (report.first_loss.count(layers[i]) == 0) report.first_loss[layers[i]] = l;
        report.last_loss[layers[i]] = l;
      }
      const double grad_norm = norm.defined() ? norm.item<double>() : 0.0;
      if (lead) {
        log::info("distill", "step ", done, "/", total, " loss ", mean, " (", per_layer.str().substr(1), ") lr ", lr,
                  " |g| ", grad_norm, " ", static_cast<int64_t>(interval.tokens_per_s), " tok/s, ETA ",
                  ledger.eta(done));
        ledger.write_metrics(done, interval,
                             {{"loss", mean}, {"layer_loss", layer_loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"skipped_steps", nonfinite.skipped()}});
      }
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

}  // namespace carve::trainer
