# tests/data — ingest, the slice store, inspect/verify/export, and the loader. Script tests generate their inputs at
# run time (python3-nibabel at /usr/bin/python3) into the build tree; the mricron templates come from Debian's
# mricron-data.
set(MS_DATA_TESTS ${CMAKE_CURRENT_LIST_DIR})
ms_test(test_store SOURCES ${MS_DATA_TESTS}/test_store.c LABELS cpu)
ms_test(test_store_truncated SOURCES ${MS_DATA_TESTS}/test_store_truncated.c LABELS cpu)
ms_test(test_png SOURCES ${MS_DATA_TESTS}/test_png.c LABELS cpu)
ms_test(test_encode SOURCES ${MS_DATA_TESTS}/test_encode.c LABELS cpu)
ms_script_test(test_ingest_synthetic ${MS_DATA_TESTS}/test_ingest_synthetic.sh LABELS cpu)
ms_script_test(test_store_truncated_tools ${MS_DATA_TESTS}/test_store_truncated.sh LABELS cpu)
ms_script_test(test_ingest_bad ${MS_DATA_TESTS}/test_ingest_bad.sh LABELS cpu)
ms_script_test(test_ingest_gzip ${MS_DATA_TESTS}/test_ingest_gzip.sh LABELS cpu)
ms_script_test(test_ingest_walk ${MS_DATA_TESTS}/test_ingest_walk.sh LABELS cpu)
ms_script_test(test_ingest_mricron ${MS_DATA_TESTS}/test_ingest_mricron.sh LABELS "cpu;slow")
ms_script_test(test_ingest_kill ${MS_DATA_TESTS}/test_ingest_kill.sh LABELS "cpu;slow")
ms_script_test(test_ingest_full ${MS_DATA_TESTS}/test_ingest_full.sh LABELS cpu)
# the realistic archive (tools/bench/gen_archive.py --small) into layout 2, bit-exact stored values
ms_script_test(test_ingest_archive ${MS_DATA_TESTS}/test_ingest_archive.sh LABELS cpu)
# layout 1 (stores written before layout 2) still reads and is extended in its own layout
ms_script_test(test_store_v1 ${MS_DATA_TESTS}/test_store_v1.sh LABELS cpu)
# a store ingested as 3 shards reads as the one-piece store (records, training), refusals of broken sets
ms_script_test(test_store_shards ${MS_DATA_TESTS}/test_store_shards.sh LABELS cpu)
# DICOM series (generated with python3-pydicom, identifying header fields) through dcm2niix
ms_script_test(test_ingest_dicom ${MS_DATA_TESTS}/test_ingest_dicom.sh LABELS cpu)
# finetune-SAM's lists as they ship (--image-root, --val-labels, split file) and the store's PNG mask rule
ms_script_test(test_ingest_lists ${MS_DATA_TESTS}/test_ingest_lists.sh LABELS cpu)
ms_script_test(test_ingest_classes ${MS_DATA_TESTS}/test_ingest_classes.sh LABELS cpu)
# --label-resample: atlases on another grid (HarvardOxford, JHU onto ch2; random synthetic pairs known exactly)
ms_script_test(test_ingest_resample ${MS_DATA_TESTS}/test_ingest_resample.sh LABELS cpu)
# the AAL lobe map of data/labelmaps/ and --label-largest on inia19 (mricron-data)
ms_script_test(test_ingest_labelmaps ${MS_DATA_TESTS}/test_ingest_labelmaps.sh LABELS cpu)
ms_script_test(test_fuzz_nifti_header ${MS_DATA_TESTS}/test_fuzz_nifti_header.sh LABELS "cpu;slow")
# libFuzzer targets (configure with CC=clang -DMS_FUZZ=ON; tests/fuzz_all.sh runs them on their seeds in
# fuzz_corpus/<target>): the NIfTI header check, whole NIfTI files (gzip and streamed), store records, a damaged
# store's data.mdb, split files, ingest's CSV list and label map, PNG.
if(MS_FUZZ)
  foreach(t fuzz_nifti_header fuzz_nifti_gz fuzz_store_record fuzz_store_open fuzz_split fuzz_ingest_lists fuzz_png)
    ms_fuzz_target(${t} ${MS_DATA_TESTS}/${t}.c)
  endforeach()
endif()
# The loader: sampler, splits, preprocessing and the augmentation checks of tests/augment/ (no store), then the
# loader over small stores written with the store's writer API and over a store written by `mrisam ingest`.
ms_test(test_loader_units SOURCES ${MS_DATA_TESTS}/test_loader_units.c LABELS cpu)
ms_test(test_loader_store SOURCES ${MS_DATA_TESTS}/test_loader_store.c LABELS cpu)
# The native augmented output through the prep op equals the model output bit for bit (the GPU input path).
ms_test(test_loader_prep SOURCES ${MS_DATA_TESTS}/test_loader_prep.c LABELS cpu)
# The split file reader: random valid files read back exactly, random broken ones refused by name and reason.
ms_test(test_split_file SOURCES ${MS_DATA_TESTS}/test_split_file.c LABELS cpu)
ms_script_test(test_loader_ingest ${MS_DATA_TESTS}/test_loader_ingest.sh LABELS cpu)
