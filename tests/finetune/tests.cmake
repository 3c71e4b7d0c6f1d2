# Fine-tuning tests: PEFT (LoRA, adapters) against PyTorch golden files, prompt generation, the fine-tuning
# model and trainer, predict/eval on fine-tuned checkpoints. Every test_*.c is a C test (suffix _slow: label slow,
# _cuda: label gpu); every test_*.sh a script test.
file(GLOB MS_FT_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.c)
foreach(src ${MS_FT_TESTS})
  get_filename_component(t ${src} NAME_WE)
  if(t MATCHES "_cuda$")
    ms_test(${t} SOURCES ${src} ${CMAKE_SOURCE_DIR}/tests/reference/counter_init.c LABELS gpu)
  elseif(t MATCHES "_slow$")
    ms_test(${t} SOURCES ${src} ${CMAKE_SOURCE_DIR}/tests/reference/counter_init.c LABELS "cpu;slow" TIMEOUT 1800)
  else()
    ms_test(${t} SOURCES ${src} ${CMAKE_SOURCE_DIR}/tests/reference/counter_init.c LABELS cpu)
  endif()
endforeach()
file(GLOB MS_FT_SCRIPTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.sh)
foreach(src ${MS_FT_SCRIPTS})
  get_filename_component(t ${src} NAME_WE)
  ms_script_test(${t} ${src} LABELS cpu)
endforeach()
