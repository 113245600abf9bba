# The data path end to end through the binary: pack a sample file with tools/pack_samples.py, validate it,
# precompute the cache with 1 rank and with 2 ranks under mpirun (byte-identical shards), kill a precompute in the
# middle of a shard and complete it on rerun, verify, and refuse a different plan.
# Run by ctest: cmake -DCARVE=... -DPYTHON=... -DMPIEXEC=... -DSOURCE=<repo> -DWORK=<scratch> -P cache_cli_test.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(TEACHER ${SOURCE}/tests/fixtures/teachers/llama)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# Every shard file of cache A equals cache B's, byte for byte; both list the same files.
function(same_shards a b)
  file(GLOB_RECURSE files_a RELATIVE ${a} ${a}/*.h5)
  file(GLOB_RECURSE files_b RELATIVE ${b} ${b}/*.h5)
  list(SORT files_a)
  list(SORT files_b)
  if(NOT files_a STREQUAL files_b OR NOT files_a)
    message(FATAL_ERROR "${a} and ${b} hold different shard files:\n${files_a}\n${files_b}")
  endif()
  foreach(f ${files_a})
    file(SHA256 ${a}/${f} ha)
    file(SHA256 ${b}/${f} hb)
    if(NOT ha STREQUAL hb)
      message(FATAL_ERROR "${f} differs between ${a} and ${b}")
    endif()
  endforeach()
endfunction()

# A sample file from JSON Lines and .npy image features.
run(0 "48 samples" ${PYTHON} ${SOURCE}/tools/make_tiny_example.py --out ${WORK}/example)
run(0 "48 samples, [0-9]+ tokens, [0-9]+ image rows" ${PYTHON} ${SOURCE}/tools/pack_samples.py
    ${WORK}/example/samples.jsonl --vocab-size 96 --image-token-id 95 --out ${WORK}/train.h5)
run(0 "valid; 48 samples" ${CARVE} data validate ${WORK}/train.h5 --teacher ${TEACHER})
run(0 "" ${PYTHON} ${SOURCE}/tools/make_tiny_example.py --out ${WORK}/bad --samples 4 --bad-token)
run(fail "samples.jsonl:3: token id 100 at position 3 is outside \\[0, 96\\)" ${PYTHON}
    ${SOURCE}/tools/pack_samples.py ${WORK}/bad/samples.jsonl --vocab-size 96 --image-token-id 95 --out ${WORK}/bad.h5)
if(EXISTS ${WORK}/bad.h5)
  message(FATAL_ERROR "pack_samples.py left bad.h5 behind after refusing its input")
endif()
run(0 "" ${PYTHON} ${SOURCE}/tools/pack_samples.py ${WORK}/example/samples.jsonl --vocab-size 100 --image-token-id 95
    --out ${WORK}/vocab100.h5)
run(1 "vocab100.h5: vocab_size 100 differs from the teacher's 96" ${CARVE} data validate ${WORK}/vocab100.h5
    --teacher ${TEACHER})

# One rank and two ranks write identical shards (one LibTorch thread each, so the arithmetic is the same).
set(ARGS --teacher ${TEACHER} --samples ${WORK}/train.h5 --shard-tokens 300 --batch-tokens 128 --top-k 8
    --layers 0-3 --threads 1)
run(0 "wrote .*manifest.json" ${CARVE} precompute ${ARGS} --out ${WORK}/one)
run(0 "wrote .*manifest.json" ${MPIEXEC} --allow-run-as-root --oversubscribe -np 2 ${CARVE} precompute ${ARGS}
    --out ${WORK}/two)
same_shards(${WORK}/one ${WORK}/two)
# Two independent jobs (a job array's tasks), each a part of the shards: the first leaves the manifest to the last,
# which writes it; the shards equal the one-rank run's.
run(0 "part 1/2 done; [0-9]+ shards of other parts are not finished yet" ${CARVE} precompute ${ARGS} --out ${WORK}/parts
    --part 1/2)
run(0 "wrote .*manifest.json" ${CARVE} precompute ${ARGS} --out ${WORK}/parts --part 0/2)
same_shards(${WORK}/one ${WORK}/parts)
run(fail "--part: '2/2' is not I/N with 0 <= I < N" ${CARVE} precompute ${ARGS} --out ${WORK}/bad --part 2/2)
run(0 "verified [0-9]+ shards.*checksums match" ${CARVE} cache verify ${WORK}/two --teacher ${TEACHER}
    --samples ${WORK}/train.h5)
run(1 "made from another teacher" ${CARVE} cache verify ${WORK}/two --teacher ${SOURCE}/tests/fixtures/teachers/qwen2)
run(0 "already complete; nothing to do" ${CARVE} precompute ${ARGS} --out ${WORK}/two)
run(1 "already holds a different cache \\(top-k: the cache has 8, this run asks for 4\\)" ${CARVE} precompute
    --teacher ${TEACHER} --samples ${WORK}/train.h5 --shard-tokens 300 --batch-tokens 128 --top-k 4 --layers 0-3
    --out ${WORK}/two)

# Killed in the middle of its second shard: only complete shards carry final names, the cache is not usable, and
# a rerun completes it to the same bytes.
execute_process(COMMAND ${CMAKE_COMMAND} -E env CARVE_FAULT_KILL_AFTER_BATCHES=4 ${CARVE} precompute ${ARGS}
                --out ${WORK}/killed RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  message(FATAL_ERROR "the fault-injected precompute was not killed")
endif()
file(GLOB_RECURSE visible RELATIVE ${WORK}/killed ${WORK}/killed/*.h5)
file(GLOB_RECURSE partial ${WORK}/killed/*.h5.tmp.*)
if(NOT partial)
  message(FATAL_ERROR "the kill did not happen in the middle of a shard (no temporary file)")
endif()
foreach(f ${visible})
  file(SHA256 ${WORK}/killed/${f} hk)
  file(SHA256 ${WORK}/one/${f} ho)
  if(NOT hk STREQUAL ho)
    message(FATAL_ERROR "the killed run left an incomplete ${f} under its final name")
  endif()
endforeach()
run(1 "did not finish; rerun the same `carve precompute`" ${CARVE} cache verify ${WORK}/killed)
run(0 "completing the unfinished cache.*already done" ${CARVE} precompute ${ARGS} --out ${WORK}/killed)
same_shards(${WORK}/one ${WORK}/killed)
file(GLOB_RECURSE leftovers ${WORK}/killed/*.tmp.*)
if(leftovers)
  message(FATAL_ERROR "temporary files left after completion: ${leftovers}")
endif()
