# tests/loader: sampler, splits, augmentation and preprocessing (no store), then the loader over small stores.
ms_test(test_loader_units SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_loader_units.c LABELS cpu)
ms_test(test_loader_store SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_loader_store.c LABELS cpu)
ms_script_test(test_loader_ingest ${CMAKE_CURRENT_LIST_DIR}/test_loader_ingest.sh LABELS cpu)
