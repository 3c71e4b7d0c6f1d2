# tests/checkpoints: weight-file readers and writers (.pth zip/legacy, safetensors), `mrisam convert`, and the RUN/
# directory (rundir, runlog).
# Fixtures come from gen_fixtures.py (/usr/bin/python3 with torch 1.13); the script test needs the same Python.
ms_test(test_ckpt_read SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ckpt_read.c LABELS cpu)
ms_test(test_ckpt_write SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ckpt_write.c LABELS cpu)
ms_test(test_rundir SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_rundir.c LABELS cpu)
ms_script_test(test_ckpt_convert ${CMAKE_CURRENT_LIST_DIR}/test_convert.sh LABELS cpu)
# libFuzzer targets (configure with CC=clang -DMS_FUZZ=ON; tests/fuzz_all.sh runs them on their seeds in
# fuzz_corpus/<target>): fuzz_ckpt (first byte 0/1: the pickle machine, 2/3: ms_sd_load_mem: .pth zip/legacy,
# safetensors), fuzz_run_json (ms_read_json: config.json, state.json).
if(MS_FUZZ)
  ms_fuzz_target(fuzz_ckpt ${CMAKE_CURRENT_LIST_DIR}/fuzz_ckpt.c)
  ms_fuzz_target(fuzz_run_json ${CMAKE_CURRENT_LIST_DIR}/fuzz_run_json.c)
endif()
