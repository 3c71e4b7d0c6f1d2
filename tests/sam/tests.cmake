# SAM model tests (encoder: tests/sam/test_sam_encoder*.c; prompt encoder + mask decoder: tests/sam/test_sam_decoder*.c).
ms_glob_tests(${CMAKE_CURRENT_LIST_DIR})
