# Helpers shared by the command-line test scripts (include()d by them).

# Runs the command in ARGN; expected_rc is an exit code or "fail" (any non-zero), and the combined output must match
# the regular expression `pattern`. The output is left in RUN_OUTPUT.
function(run expected_rc pattern)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(all "${out}${err}")
  if(expected_rc STREQUAL "fail")
    if(rc EQUAL 0)
      message(FATAL_ERROR "${ARGN}: succeeded, expected a failure\n${all}")
    endif()
  elseif(NOT rc EQUAL expected_rc)
    message(FATAL_ERROR "${ARGN}: exit code ${rc}, expected ${expected_rc}\n${all}")
  endif()
  if(NOT all MATCHES "${pattern}")
    message(FATAL_ERROR "${ARGN}: output does not match '${pattern}'\n${all}")
  endif()
  set(RUN_OUTPUT "${all}" PARENT_SCOPE)
endfunction()
