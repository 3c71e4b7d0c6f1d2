/* tests/checkpoints/fuzz_run_json.c — libFuzzer target for ms_read_json, the reader of a run's JSON files
 * (RUN/config.json, which embed/segment/predict read to rebuild a pretrained model; state.json on resume; an
 * eval's shots file). A file that parses is printed and parsed again and must give the same text. Any crash, leak
 * or sanitizer report is a bug, and so is an error message of more than one line. Built with CC=clang
 * -DMS_FUZZ=ON (tests/checkpoints/tests.cmake); seeds in tests/checkpoints/fuzz_corpus/fuzz_run_json. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "checkpoints/rundir.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *j = NULL;
    ms_status st = ms_read_json(ms_fuzz_memfd(data, size), 1 << 20, &j);
    if (!st) {
        if (!j) abort();
        char *a = cJSON_PrintUnformatted(j);
        cJSON *k = a ? cJSON_Parse(a) : NULL;
        char *b = k ? cJSON_PrintUnformatted(k) : NULL;
        if (a && (!b || strcmp(a, b))) abort();
        cJSON_free(a);
        cJSON_free(b);
        cJSON_Delete(k);
        cJSON_Delete(j);
    }
    ms_fuzz_check_msg(st);
    return 0;
}
