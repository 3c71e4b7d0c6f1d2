# Op tests: forward against naive double-precision loops, backward against central finite differences.
foreach(t test_ops_a test_ops_b)
  if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
    ms_test(${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.c ${CMAKE_CURRENT_LIST_DIR}/ref.c LABELS cpu)
  endif()
endforeach()
# CUDA against CPU, op by op (skips with 77 where no GPU is found).
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/test_ops_cuda.c)
  ms_test(test_ops_cuda SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ops_cuda.c LABELS gpu)
endif()
