# tests/finetune — the prompt encoder + mask decoder and the whole model against PyTorch golden files (golden/),
# PEFT (LoRA, adapters), prompt generation, the fine-tuning model and trainer, `mrisam embed` / `segment` /
# `finetune`, vit_t as a whole SAM against MobileSAM's own code (test_mobilesam, test_segment_vit_t; golden files
# from gen_mobilesam_golden.py), and predict/eval: `mrisam predict` against predict_ref.py, the overlap metrics, the
# NIfTI label writer and `mrisam eval`. Every test_*.c / test_*.sh is picked up by name; test_nifti_write takes its driver.
ms_glob_tests(${CMAKE_CURRENT_LIST_DIR} EXCLUDE test_nifti_write test_store_norm test_finetune_mpi test_segment_auto)
add_executable(nifti_write_driver ${CMAKE_CURRENT_LIST_DIR}/nifti_write_driver.c)
target_link_libraries(nifti_write_driver PRIVATE mrisam_lib)
if(MS_HAVE_CUDA)
  set_target_properties(nifti_write_driver PROPERTIES LINKER_LANGUAGE CUDA)
endif()
ms_script_test(test_nifti_write ${CMAKE_CURRENT_LIST_DIR}/test_nifti_write.sh LABELS cpu
               ARGS $<TARGET_FILE:nifti_write_driver>)
# A store read with another intensity normalisation than ingest's (data/store_norm.h): pixels against a Python
# reference from the sources, refusals, finetune/pretrain --intensity, eval of such a model; the driver reads stores.
add_executable(store_norm_driver ${CMAKE_CURRENT_LIST_DIR}/store_norm_driver.c)
target_link_libraries(store_norm_driver PRIVATE mrisam_lib)
if(MS_HAVE_CUDA)
  set_target_properties(store_norm_driver PROPERTIES LINKER_LANGUAGE CUDA)
endif()
ms_script_test(test_store_norm ${CMAKE_CURRENT_LIST_DIR}/test_store_norm.sh LABELS cpu
               ARGS $<TARGET_FILE:store_norm_driver>)
# `segment --auto` (finetune/amg.h) against amg_ref.py; the driver runs the generator's selection on synthetic
# candidates.
add_executable(amg_driver ${CMAKE_CURRENT_LIST_DIR}/amg_driver.c)
target_link_libraries(amg_driver PRIVATE mrisam_lib)
if(MS_HAVE_CUDA)
  set_target_properties(amg_driver PROPERTIES LINKER_LANGUAGE CUDA)
endif()
ms_script_test(test_segment_auto ${CMAKE_CURRENT_LIST_DIR}/test_segment_auto.sh LABELS cpu
               ARGS $<TARGET_FILE:amg_driver>)
# libFuzzer target (configure with CC=clang -DMS_FUZZ=ON; tests/fuzz_all.sh runs it on its seeds in
# fuzz_corpus/fuzz_ft_meta): a fine-tuned checkpoint's meta.json.
if(MS_FUZZ)
  ms_fuzz_target(fuzz_ft_meta ${CMAKE_CURRENT_LIST_DIR}/fuzz_ft_meta.c)
endif()
# Data-parallel finetune over MPI (2 ranks, mpirun): the doubled batch's parameters, stop and resume. The mpi label
# runs it alone (RUN_SERIAL). Registered in every build: without MPI it fails, since tools/run.sh installs Open MPI.
ms_script_test(test_finetune_mpi ${CMAKE_CURRENT_LIST_DIR}/test_finetune_mpi.sh LABELS "cpu;mpi" TIMEOUT 300)
