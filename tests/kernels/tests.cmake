# Op tests: one table of op cases (op_cases.c) run by three tests. test_ops_a / test_ops_b: the table's two halves on
# the CPU, forward against naive double-precision loops (ref.c), backward against central finite differences.
foreach(t test_ops_a test_ops_b)
  ms_test(${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.c ${CMAKE_CURRENT_LIST_DIR}/op_cases.c ${CMAKE_CURRENT_LIST_DIR}/ref.c
          LABELS cpu)
endforeach()
# The whole table on CUDA against the CPU (skips with 77 where no GPU is found).
ms_test(test_ops_cuda SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ops_cuda.c ${CMAKE_CURRENT_LIST_DIR}/op_cases.c
        ${CMAKE_CURRENT_LIST_DIR}/ref.c LABELS gpu)
# Relative positions folded into q'/k' (kernels/attention_fold.h) against the rel-pos attention op, head_dim_qk,
# and the CPU bf16 emulation of attention.
ms_test(test_attention_fold SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_attention_fold.c LABELS cpu)
# The prep op (native uint16 slices → model input) on the CPU against the loader's preprocessing, bit for bit;
# test_prep_cuda: the same batches through the CUDA half against the CPU half, bit for bit (skips with 77 without a GPU).
ms_test(test_prep SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_prep.c LABELS cpu)
ms_test(test_prep_cuda SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_prep.c ARGS cuda LABELS gpu)
