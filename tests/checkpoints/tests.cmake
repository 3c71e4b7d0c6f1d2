# tests/checkpoints: weight-file readers and writers (.pth zip/legacy, safetensors), `mrisam convert`, and the RUN/
# directory (rundir, runlog).
# Fixtures come from gen_fixtures.py (/usr/bin/python3 with torch 1.13); the script test needs the same Python.
ms_test(test_ckpt_read SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ckpt_read.c LABELS cpu)
ms_test(test_ckpt_write SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ckpt_write.c LABELS cpu)
ms_test(test_rundir SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_rundir.c LABELS cpu)
ms_script_test(test_ckpt_convert ${CMAKE_CURRENT_LIST_DIR}/test_convert.sh LABELS cpu)
# libFuzzer target (configure with CC=clang -DMS_FUZZ=ON): ./fuzz_ckpt CORPUS_DIR; seed the corpus with the fixtures,
# each file prefixed by a selector byte (0/1: pickle machine, 2/3: ms_sd_load_mem).
if(MS_FUZZ)
  add_executable(fuzz_ckpt ${CMAKE_CURRENT_LIST_DIR}/fuzz_ckpt.c)
  target_compile_options(fuzz_ckpt PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz_ckpt PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz_ckpt PRIVATE mrisam_lib)
endif()
