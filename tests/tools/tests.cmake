# tests/tools — reliability checks through the mrisam binary (tools/reliability/, docs/RELIABILITY.md): the kill
# campaign reduced for CI, every writer on a full disk, and what a resume cleans up after a kill. Every test_*.sh is
# a script test (label cpu).
ms_glob_tests(${CMAKE_CURRENT_LIST_DIR})
