# The carve binary's command line: help, config files, overrides and every kind of usage error.
# Run by ctest as: cmake -DCARVE=<binary> -DFIXTURES=<tests/fixtures> -DWORK=<scratch dir> -P cli_test.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(TEACHER ${FIXTURES}/teachers/llama)

include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)

# carve(<expected exit code> <regex the combined output must match> args...); the output is left in LAST_OUTPUT.
function(carve expected_rc pattern)
  run(${expected_rc} "${pattern}" ${CARVE} ${ARGN})
  set(LAST_OUTPUT "${RUN_OUTPUT}" PARENT_SCOPE)
endfunction()

# Help lists subcommands, and each subcommand's options with their defaults.
carve(0 "inspect.*generate" help)
carve(0 "--max-new-tokens.*\\(=32\\)" generate --help)
carve(0 "--max-new-tokens.*\\(=32\\)" help generate)
carve(2 "unknown subcommand 'genrate'.*did you mean 'generate'" genrate)

# inspect prints the architecture, parameter count and files.
carve(0 "llama.*layers.*model.safetensors" inspect --model ${TEACHER})

# Unknown keys name the closest valid one, on the command line and in a config file.
carve(2 "unknown option '--max-new-token'.*did you mean '--max-new-tokens'" generate --model ${TEACHER}
      --tokens 1,2 --max-new-token 3)
file(WRITE ${WORK}/typo.ini "model = ${TEACHER}\ntokens = 1,2,3\ntemprature = 0.5\n")
carve(2 "typo.ini: unknown key 'temprature' \\(did you mean 'temperature'" generate --config ${WORK}/typo.ini)

# A missing required option and bad values are named.
carve(2 "--tokens.*required" generate --model ${TEACHER})
carve(2 "'many'.*'--max-new-tokens' is invalid" generate --model ${TEACHER} --tokens 1,2 --max-new-tokens many)
carve(2 "--tokens: id 500 is outside the vocabulary \\[0, 96\\)" generate --model ${TEACHER} --tokens 1,500)
# (';' separates CMake's list items: prompts of several rows come from config files.)
file(WRITE ${WORK}/empty_row.ini "tokens = 1,2;;3\n")
carve(2 "--tokens: prompt row 1 has no ids" generate --model ${TEACHER} --config ${WORK}/empty_row.ini)
carve(2 "--dtype: 'float8' is not a dtype" generate --model ${TEACHER} --tokens 1,2 --dtype float8)
carve(2 "--config: cannot read .*missing.ini" generate --config ${WORK}/missing.ini)
carve(1 "nowhere: not a directory" inspect --model ${WORK}/nowhere)

# A config file supplies keys, the command line overrides them, and the resolved configuration is printed and
# saved in the run folder.
file(WRITE ${WORK}/gen.ini "# a greedy continuation\nmodel = ${TEACHER}\ntokens = 5,6,7;8,9,10\nmax-new-tokens = 9\n")
carve(0 "max-new-tokens = 4" generate --config ${WORK}/gen.ini --max-new-tokens 4 --out ${WORK}/run)
file(READ ${WORK}/run/config.ini saved)
if(NOT saved MATCHES "max-new-tokens = 4" OR NOT saved MATCHES "tokens = 5,6,7;8,9,10")
  message(FATAL_ERROR "run/config.ini does not hold the resolved configuration:\n${saved}")
endif()
# Two rows of four new tokens each.
if(NOT LAST_OUTPUT MATCHES "row 0:( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)\nrow 1:( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)\n")
  message(FATAL_ERROR "generate did not print two rows of 4 tokens:\n${LAST_OUTPUT}")
endif()

# convert carves a student; the layout is given exactly one way, and a wrong one is named.
carve(2 "--layout: 'AMMX' has 4 characters but the teacher has 3 layers" convert --teacher ${TEACHER}
      --layout AMMX --out ${WORK}/bad_student)
carve(2 "give the layout exactly one way.*\\(got 2\\)" convert --teacher ${TEACHER} --layout AMM
      --attention-count 1 --out ${WORK}/bad_student)
carve(2 "--mixer: 'mamba3'" convert --teacher ${TEACHER} --layout AMM --mixer mamba3 --out ${WORK}/bad_student)
if(EXISTS ${WORK}/bad_student)
  message(FATAL_ERROR "a failed convert left ${WORK}/bad_student behind")
endif()
carve(0 "wrote .*student: layout MAM" convert --teacher ${TEACHER} --layout MAM --mixer mamba2 --out ${WORK}/student)
# inspect describes the student: its layout, mixer and what each stage trains; generate runs it.
carve(0 "layout MAM \\(1 attention, 2 mamba-2\\).*mixer +mamba2.*stage1 +[0-9.]+K" inspect --model ${WORK}/student)
carve(0 "row 0:( [0-9]+)( [0-9]+)( [0-9]+)\n" generate --model ${WORK}/student --tokens 3,4,5 --max-new-tokens 3)
# Prompts of different lengths in one batch: each row continues from its own length.
file(WRITE ${WORK}/ragged.ini "tokens = 3,4,5,6,7;8,9\n")
carve(0 "row 0:( [0-9]+)( [0-9]+)( [0-9]+)\nrow 1:( [0-9]+)( [0-9]+)( [0-9]+)\n" generate --model ${WORK}/student
      --config ${WORK}/ragged.ini --max-new-tokens 3)
# Converting over an existing checkpoint is refused rather than overwriting it.
carve(1 "--out: .*student already holds a checkpoint.*--overwrite" convert --teacher ${TEACHER} --layout MAM
      --out ${WORK}/student)
carve(0 "layout MMA" convert --teacher ${TEACHER} --layout MMA --out ${WORK}/student --overwrite)

# bench kernels prints a table and writes JSON for a named shape (on CPU: the reference only).
carve(0 "tiny +0.[0-9]+ / " bench kernels --shapes tiny --warmup 0 --repeat 1 --json ${WORK}/bench.json)
carve(2 "--shapes: 'huge' is neither a preset" bench kernels --shapes huge)
carve(2 "--kernels: expected 'fused'" eval --teacher x --samples y --kernels triton)
file(READ ${WORK}/bench.json bench_json)
if(NOT bench_json MATCHES "\"reference_forward_ms\": [0-9.]+")
  message(FATAL_ERROR "bench.json lacks reference_forward_ms:\n${bench_json}")
endif()

# Subcommands with actions list them and name the closest to a typo.
carve(2 "unknown action 'verfy' \\(did you mean 'verify'\\?\\); available: verify" cache verfy ${WORK}/cache)
carve(2 "actions:.*kernels.*cache" bench)
