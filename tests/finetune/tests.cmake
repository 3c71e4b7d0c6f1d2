# Fine-tuning tests: PEFT (LoRA, adapters) against PyTorch golden files, prompt generation, the fine-tuning
# model and trainer, predict/eval on fine-tuned checkpoints.
ms_glob_tests(${CMAKE_CURRENT_LIST_DIR})
