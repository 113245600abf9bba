# A peer that dies (SIGKILL) or stalls while the others wait in an all-reduce: the job must end non-zero within a
# bounded time, with mpirun's notice of the dead rank or carve's message naming the operation and the ranks.
# Run by ctest: cmake -DTESTS=<carve_tests> -DMPIEXEC=... -DNP=3 [-DBACKEND=nccl] -P comm_fault_test.cmake
if(NOT BACKEND)
  set(BACKEND mpi)
endif()
foreach(fault die stall)
  string(TIMESTAMP start "%s")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env CARVE_COMM_TIMEOUT=3 CARVE_TEST_PEER_FAULT=${fault} CARVE_TEST_BACKEND=${BACKEND}
            ${MPIEXEC} --allow-run-as-root --oversubscribe -np ${NP} ${TESTS} --gtest_filter=CommFault.*
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 90)
  string(TIMESTAMP end "%s")
  math(EXPR seconds "${end} - ${start}")
  set(all "${out}${err}")
  if(rc EQUAL 0)
    message(FATAL_ERROR "peer ${fault}s: the job exited 0\n${all}")
  endif()
  if(rc MATCHES "timeout" OR seconds GREATER 60)
    message(FATAL_ERROR "peer ${fault}s: the survivors hung (${seconds} s)\n${all}")
  endif()
  if(fault STREQUAL "stall")
    if(NOT all MATCHES "carve: rank [0-9]+: all_reduce\\(sum\\) of 1024 x Float on fault test \\(${BACKEND}, world ranks [0-9,]+\\) (has not completed after [0-9.]+ s|failed)")
      message(FATAL_ERROR "peer stalls: no message naming the operation and the ranks\n${all}")
    endif()
  elseif(NOT all MATCHES "(exited on signal 9|carve: rank [0-9]+: all_reduce)")
    message(FATAL_ERROR "peer dies: no message about the dead rank\n${all}")
  endif()
  message(STATUS "peer ${fault}s: job ended with ${rc} after ${seconds} s")
endforeach()
