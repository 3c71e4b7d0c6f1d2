/* tests/finetune/fuzz_ft_meta.c — libFuzzer target for a fine-tuned checkpoint's meta.json (ms_ft_meta_read: the
 * model, method, tasks with their classes and names, the preprocessing). A file that loads must describe 1..8
 * tasks of 2..31 classes each. Any crash, leak or sanitizer report is a bug, and so is an error message of more
 * than one line. Built with CC=clang -DMS_FUZZ=ON (tests/finetune/tests.cmake); seeds in
 * tests/finetune/fuzz_corpus/fuzz_ft_meta. */
#include <stdint.h>
#include <stdlib.h>

#include "finetune/ft_model.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ms_ft_config c;
    ms_status st = ms_ft_meta_read(ms_fuzz_memfd(data, size), &c);
    if (!st) {
        if (c.n_tasks < 1 || c.n_tasks > MS_FT_MAX_TASKS) abort();
        for (int t = 0; t < c.n_tasks; t++)
            if (c.task[t].num_cls < 2 || c.task[t].num_cls > MS_FT_MAX_CLASSES) abort();
    }
    ms_fuzz_check_msg(st);
    return 0;
}
