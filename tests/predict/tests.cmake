# mrisam predict: NIfTI volumes → label volumes on the input grid, checked against the PyTorch reference.
file(GLOB MS_PREDICT_SCRIPTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.sh)
foreach(src ${MS_PREDICT_SCRIPTS})
  get_filename_component(t ${src} NAME_WE)
  ms_script_test(${t} ${src} LABELS cpu)
endforeach()
