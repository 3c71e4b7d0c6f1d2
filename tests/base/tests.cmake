ms_test(test_base SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_base.c LABELS cpu)
ms_test(test_path SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_path.c LABELS cpu)
ms_test(test_plan SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_plan.c LABELS cpu)
ms_test(test_bf16 SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bf16.c LABELS cpu)
