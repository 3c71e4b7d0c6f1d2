# pretrain/: MAE masking, optimiser schedule, (later) the MAE step against PyTorch golden files.
file(GLOB MS_PRETRAIN_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.c)
foreach(src ${MS_PRETRAIN_TESTS})
  get_filename_component(t ${src} NAME_WE)
  ms_test(${t} SOURCES ${src} LABELS cpu)
endforeach()
ms_script_test(test_pretrain ${CMAKE_CURRENT_LIST_DIR}/test_pretrain.sh LABELS "cpu;slow" TIMEOUT 1200)
