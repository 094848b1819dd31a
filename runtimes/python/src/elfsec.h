// SPDX-License-Identifier: Apache-2.0
/*
 * Finds a named section of an ELF object loaded in this process: how the
 * runtime reads CPython 3.14's _AsyncioDebug, which _asyncio puts in a
 * section of its own (".AsyncioDebug") without exporting the symbol.
 * Plain C (no Python.h), unit-tested (tests/runtime_unit/elfsec_test.cpp).
 *
 * Locking: none; reads the object's file with pread.
 */
#ifndef ASYNCTRACE_RUNTIME_ELFSEC_H
#define ASYNCTRACE_RUNTIME_ELFSEC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The loaded address of section `name` of the object (shared library or
 * executable) that contains the code or data at `inside`, and its size in
 * *size; NULL if there is no such allocated section or the file cannot be
 * read. */
void *elf_loaded_section(const void *inside, const char *name, size_t *size);

#ifdef __cplusplus
}
#endif

#endif
