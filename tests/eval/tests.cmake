# tests/eval — overlap metrics, the NIfTI label writer and `mrisam eval`. Script tests generate their volumes at run
# time with python3-nibabel (/usr/bin/python3) and check the results with nibabel and numpy.
set(MS_EVAL_TESTS ${CMAKE_CURRENT_LIST_DIR})
ms_test(test_eval_metrics SOURCES ${MS_EVAL_TESTS}/test_eval_metrics.c LABELS cpu)
add_executable(nifti_write_driver ${MS_EVAL_TESTS}/nifti_write_driver.c)
target_link_libraries(nifti_write_driver PRIVATE mrisam_lib)
if(MS_HAVE_CUDA)
  set_target_properties(nifti_write_driver PROPERTIES LINKER_LANGUAGE CUDA)
endif()
ms_script_test(test_nifti_write ${MS_EVAL_TESTS}/test_nifti_write.sh LABELS cpu ARGS $<TARGET_FILE:nifti_write_driver>)
ms_script_test(test_eval_cli ${MS_EVAL_TESTS}/test_eval_cli.sh LABELS cpu)
