# tests/pretrain — the image encoders (SAM's ViT: test_sam_encoder*.c against PyTorch golden files in golden/;
# MobileSAM's TinyViT: test_tinyvit*.c against MobileSAM's own code, golden files from gen_tinyvit_golden.py),
# MAE masking, decoder and one step against PyTorch golden files, and `mrisam pretrain` end to end.
# Every test_*.c is a C test (suffix _cuda: label gpu, _slow: label slow); the script tests are registered below.
ms_glob_tests(${CMAKE_CURRENT_LIST_DIR} NO_SCRIPTS)
ms_script_test(test_pretrain ${CMAKE_CURRENT_LIST_DIR}/test_pretrain.sh LABELS "cpu;slow" TIMEOUT 1200)
# a second run into a RUN/ is refused, --overwrite equals a fresh run, --resume still continues (checkpoints/rundir.h)
ms_script_test(test_pretrain_rundir ${CMAKE_CURRENT_LIST_DIR}/test_pretrain_rundir.sh LABELS cpu)
# data parallel over MPI (2 ranks on the CPU): the doubled batch, stop and resume, a hung rank (docs/DISTRIBUTED.md)
ms_script_test(test_pretrain_mpi ${CMAKE_CURRENT_LIST_DIR}/test_pretrain_mpi.sh LABELS "cpu;mpi" TIMEOUT 300)
# MAE over MobileSAM's TinyViT through the command: stop and resume, the export loads back (docs/MAE.md §TinyViT)
ms_script_test(test_mae_tinyvit_cli ${CMAKE_CURRENT_LIST_DIR}/test_mae_tinyvit_cli.sh LABELS cpu)
