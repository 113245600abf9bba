# carve distill through the binary under mpirun: 4 processes as 2 layer groups x 2 replicas, a run killed (SIGKILL
# on one rank) and resumed ends byte-identical to an uninterrupted one; stage 2 from stage 1; the student it exports
# generates; a checkpoint write killed midway is skipped on resume; a NaN loss stops every rank naming the step and layer, or is skipped; grids that do not fit are refused
# before any work.
# Run by ctest: cmake -DCARVE=... -DPYTHON=... -DMPIEXEC=... -DSOURCE=<repo> -DWORK=<scratch> -P distill_cli_test.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(TEACHER ${SOURCE}/tests/fixtures/teachers/llama)
set(MPI ${MPIEXEC} --allow-run-as-root --oversubscribe)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

function(same_file a b)
  file(SHA256 ${a} ha)
  file(SHA256 ${b} hb)
  if(NOT ha STREQUAL hb)
    message(FATAL_ERROR "${a} and ${b} differ")
  endif()
endfunction()

run(0 "48 samples" ${PYTHON} ${SOURCE}/tools/make_tiny_example.py --out ${WORK}/example)
run(0 "48 samples" ${PYTHON} ${SOURCE}/tools/pack_samples.py ${WORK}/example/samples.jsonl --vocab-size 96
    --image-token-id 95 --out ${WORK}/train.h5)
run(0 "manifest" ${CARVE} precompute --teacher ${TEACHER} --samples ${WORK}/train.h5 --out ${WORK}/cache --top-k 0
    --batch-tokens 256 --threads 1)

set(BASE --teacher ${TEACHER} --cache ${WORK}/cache --layout MMM --steps 6 --batch-tokens 128 --checkpoint-every 2
    --log-every 2 --threads 1 --comm-timeout 60)
set(ARGS ${BASE} --layer-groups 2)
run(0 "step 6/6 loss [0-9.]+ \\(L0 [0-9.]+ L1 [0-9.]+ L2 [0-9.]+\\)" ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/whole)
# One rank dies after step 3 (a checkpoint was written at step 2): the job fails; the rerun resumes at step 2.
run(fail "" ${CMAKE_COMMAND} -E env CARVE_FAULT_KILL_AFTER_STEPS=3 ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/crash)
run(0 "resuming from .*step_00000002 at step 2 of 6" ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/crash)
foreach(layer 000 001 002)
  same_file(${WORK}/whole/stage1/checkpoints/step_00000006/layer_${layer}.safetensors
            ${WORK}/crash/stage1/checkpoints/step_00000006/layer_${layer}.safetensors)
endforeach()
# Rank 0 dies while writing step 4's checkpoint (its layer files written, state.json not): the incomplete checkpoint
# is skipped with the reason, the rerun resumes from step 2, and the result equals the uninterrupted run.
run(fail "" ${CMAKE_COMMAND} -E env CARVE_FAULT_KILL_IN_CHECKPOINT=4 ${MPI} -np 4 ${CARVE} distill ${ARGS}
    --out ${WORK}/torn)
if(NOT IS_DIRECTORY ${WORK}/torn/stage1/checkpoints/step_00000004 OR EXISTS ${WORK}/torn/stage1/checkpoints/step_00000004/state.json)
  message(FATAL_ERROR "the killed run should have left step 4's checkpoint without state.json")
endif()
run(0 "skipping .*step_00000004: no state.json.*resuming from .*step_00000002 at step 2 of 6" ${MPI} -np 4 ${CARVE}
    distill ${ARGS} --out ${WORK}/torn)
foreach(layer 000 001 002)
  same_file(${WORK}/whole/stage1/checkpoints/step_00000006/layer_${layer}.safetensors
            ${WORK}/torn/stage1/checkpoints/step_00000006/layer_${layer}.safetensors)
endforeach()
# Metrics: one JSON line per logged step, with every layer's loss.
file(STRINGS ${WORK}/whole/stage1/metrics.jsonl lines)
list(LENGTH lines n)
if(NOT n EQUAL 4)
  message(FATAL_ERROR "metrics.jsonl has ${n} lines, expected 4 (steps 1, 2, 4, 6)")
endif()
list(GET lines 3 last)
if(NOT last MATCHES "\"layer_loss\":{\"0\":[0-9.e-]+,\"1\":[0-9.e-]+,\"2\":[0-9.e-]+}" OR NOT last MATCHES "\"tokens_per_s\"")
  message(FATAL_ERROR "metrics.jsonl's last line lacks per-layer losses or tokens/s: ${last}")
endif()
# A finished run is not redone.
run(0 "already complete: step 6 of 6" ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/whole)

# A NaN loss (injected into layer 1 at step 3): by default every rank stops with an error naming the step and the
# layer, leaving step 2's checkpoint as the newest, from which a clean rerun ends identical to the uninterrupted run;
# with --on-nonfinite skip the step is skipped, logged and counted, and the run completes with finite losses.
run(fail "step 3: the loss is NaN or infinite \\(layer 1, gradient norm\\); stopped with the weights and checkpoints as they were"
    ${CMAKE_COMMAND} -E env CARVE_FAULT_NAN_LOSS=3:1 ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/nan_stop)
if(NOT IS_DIRECTORY ${WORK}/nan_stop/stage1/checkpoints/step_00000002
   OR EXISTS ${WORK}/nan_stop/stage1/checkpoints/step_00000004)
  message(FATAL_ERROR "after the NaN stop the newest checkpoint should be step 2")
endif()
run(0 "resuming from .*step_00000002 at step 2 of 6" ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/nan_stop)
foreach(layer 000 001 002)
  same_file(${WORK}/whole/stage1/checkpoints/step_00000006/layer_${layer}.safetensors
            ${WORK}/nan_stop/stage1/checkpoints/step_00000006/layer_${layer}.safetensors)
endforeach()
run(0 "warning: step 3 skipped: the loss is NaN or infinite \\(layer 1, gradient norm\\).*step 6/6 loss [0-9.]+ \\(L0 [0-9.]+ L1 [0-9.]+"
    ${CMAKE_COMMAND} -E env CARVE_FAULT_NAN_LOSS=3:1 ${MPI} -np 4 ${CARVE} distill ${ARGS} --out ${WORK}/nan_skip
    --on-nonfinite skip)
file(STRINGS ${WORK}/nan_skip/stage1/metrics.jsonl skip_lines)
list(GET skip_lines -1 skip_last)
if(NOT skip_last MATCHES "\"skipped_steps\":1" OR skip_last MATCHES "nan|null")
  message(FATAL_ERROR "metrics.jsonl's last line should count one skipped step and finite losses: ${skip_last}")
endif()
run(fail "--on-nonfinite: 'maybe' is not a policy: expected stop or skip" ${CARVE} distill ${ARGS} --out ${WORK}/bad
    --on-nonfinite maybe)

# Stage 2 starts from stage 1's newest checkpoint; its student generates.
run(0 "student written to .*stage2/student" ${MPI} -np 2 ${CARVE} distill ${ARGS} --stage 2 --out ${WORK}/whole)
run(0 "" ${CARVE} generate --model ${WORK}/whole/stage2/student --tokens 1,2,3 --max-new-tokens 4)

# Stage 3 from the stage-2 student on 2 processes: a run killed after step 3 and resumed ends byte-identical to an
# uninterrupted one; the exported student generates.
set(S3 --teacher ${TEACHER} --cache ${WORK}/cache --layout MMM --stage 3 --init ${WORK}/whole/stage2/student --steps 6
    --batch-tokens 128 --checkpoint-every 2 --log-every 2 --threads 1 --comm-timeout 60 --lr 1e-3)
run(0 "step 6/6 loss [0-9.]+ \\(kl [0-9.]+\\).*student written to .*stage3/student" ${MPI} -np 2 ${CARVE} distill ${S3}
    --out ${WORK}/s3whole)
run(fail "" ${CMAKE_COMMAND} -E env CARVE_FAULT_KILL_AFTER_STEPS=3 ${MPI} -np 2 ${CARVE} distill ${S3} --out ${WORK}/s3crash)
run(0 "resuming from .*step_00000002 at step 2 of 6" ${MPI} -np 2 ${CARVE} distill ${S3} --out ${WORK}/s3crash)
foreach(file student.safetensors adam_00000.safetensors)
  same_file(${WORK}/s3whole/stage3/checkpoints/step_00000006/${file} ${WORK}/s3crash/stage3/checkpoints/step_00000006/${file})
endforeach()
run(0 "" ${CARVE} generate --model ${WORK}/s3whole/stage3/student --tokens 1,2,3 --max-new-tokens 4)
# Stage 3's loss terms are checked the same way.
run(fail "step 3: the loss is NaN or infinite \\(kl" ${CMAKE_COMMAND} -E env CARVE_FAULT_NAN_LOSS=3 ${MPI} -np 2
    ${CARVE} distill ${S3} --out ${WORK}/s3nan)
run(0 "warning: step 3 skipped: the loss is NaN or infinite \\(kl.*step 6/6 loss [0-9.]+ \\(kl [0-9.]+\\)"
    ${CMAKE_COMMAND} -E env CARVE_FAULT_NAN_LOSS=3 ${MPI} -np 2 ${CARVE} distill ${S3} --out ${WORK}/s3nan_skip
    --on-nonfinite skip)

run(fail "--temperature 2 needs --teacher-logits online" ${CARVE} distill ${S3} --out ${WORK}/s3bad --teacher-logits cache
    --temperature 2)

# Grids that do not fit stop before any work, naming the flag.
run(fail "the world of 3 processes does not fit 2 layer groups" ${MPI} -np 3 ${CARVE} distill ${ARGS}
    --out ${WORK}/bad)
run(fail "--layer-groups 4 is more than the 3 layers to train" ${MPI} -np 4 ${CARVE} distill ${BASE} --out ${WORK}/bad
    --layer-groups 4)
run(fail "stage 2 starts from stage 1's result|no complete stage-1 checkpoint" ${CARVE} distill --teacher ${TEACHER}
    --cache ${WORK}/cache --layout MMM --stage 2 --out ${WORK}/nostage1)
run(fail "cannot resume from .*: it was written with layout = \"MMM\", this run has \"AMM\"" ${MPI} -np 4 ${CARVE}
    distill --teacher ${TEACHER} --cache ${WORK}/cache --layout AMM --layer-groups 2 --steps 6 --batch-tokens 128
    --threads 1 --out ${WORK}/crash)
