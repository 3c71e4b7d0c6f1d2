# tests/data — ingest, the slice store, inspect/verify/export, and the loader. Script tests generate their inputs at
# run time (python3-nibabel at /usr/bin/python3) into the build tree; the mricron templates come from Debian's
# mricron-data.
set(MS_DATA_TESTS ${CMAKE_CURRENT_LIST_DIR})
ms_test(test_store SOURCES ${MS_DATA_TESTS}/test_store.c LABELS cpu)
ms_test(test_store_truncated SOURCES ${MS_DATA_TESTS}/test_store_truncated.c LABELS cpu)
ms_test(test_png SOURCES ${MS_DATA_TESTS}/test_png.c LABELS cpu)
ms_script_test(test_ingest_synthetic ${MS_DATA_TESTS}/test_ingest_synthetic.sh LABELS cpu)
ms_script_test(test_store_truncated_tools ${MS_DATA_TESTS}/test_store_truncated.sh LABELS cpu)
ms_script_test(test_ingest_bad ${MS_DATA_TESTS}/test_ingest_bad.sh LABELS cpu)
ms_script_test(test_ingest_gzip ${MS_DATA_TESTS}/test_ingest_gzip.sh LABELS cpu)
ms_script_test(test_ingest_walk ${MS_DATA_TESTS}/test_ingest_walk.sh LABELS cpu)
ms_script_test(test_ingest_mricron ${MS_DATA_TESTS}/test_ingest_mricron.sh LABELS "cpu;slow")
ms_script_test(test_ingest_kill ${MS_DATA_TESTS}/test_ingest_kill.sh LABELS "cpu;slow")
ms_script_test(test_ingest_full ${MS_DATA_TESTS}/test_ingest_full.sh LABELS cpu)
# finetune-SAM's lists as they ship (--image-root, --val-labels, split file) and the store's PNG mask rule
ms_script_test(test_ingest_lists ${MS_DATA_TESTS}/test_ingest_lists.sh LABELS cpu)
ms_script_test(test_ingest_classes ${MS_DATA_TESTS}/test_ingest_classes.sh LABELS cpu)
ms_script_test(test_fuzz_nifti_header ${MS_DATA_TESTS}/test_fuzz_nifti_header.sh LABELS "cpu;slow")
# With CC=clang -DMS_FUZZ=ON the same target is also built against the instrumented library: ./fuzz_nifti_header CORPUS
if(MS_FUZZ)
  add_executable(fuzz_nifti_header ${MS_DATA_TESTS}/fuzz_nifti_header.c)
  target_compile_options(fuzz_nifti_header PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz_nifti_header PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz_nifti_header PRIVATE mrisam_lib)
endif()
# The loader: sampler, splits, preprocessing and the augmentation checks of tests/augment/ (no store), then the
# loader over small stores written with the store's writer API and over a store written by `mrisam ingest`.
ms_test(test_loader_units SOURCES ${MS_DATA_TESTS}/test_loader_units.c LABELS cpu)
ms_test(test_loader_store SOURCES ${MS_DATA_TESTS}/test_loader_store.c LABELS cpu)
# The split file reader: random valid files read back exactly, random broken ones refused by name and reason.
ms_test(test_split_file SOURCES ${MS_DATA_TESTS}/test_split_file.c LABELS cpu)
ms_script_test(test_loader_ingest ${MS_DATA_TESTS}/test_loader_ingest.sh LABELS cpu)
