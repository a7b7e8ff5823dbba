/*
 * fuzz.h — what the fuzz targets share.  Each fuzz_<name>.c defines
 * LLVMFuzzerTestOneInput; built with -fsanitize=fuzzer it is a libFuzzer
 * binary, linked with replay.c it is a plain program that runs it over every
 * file of the folders it is given (ctest's fuzz_replay_<name>).
 */
#ifndef PGTX_FUZZ_H
#define PGTX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string (cut at its first NUL); free() it. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
