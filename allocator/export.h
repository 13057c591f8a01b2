// Symbol visibility for actmem's shared libraries.
//
// Everything is built with hidden visibility; only the C ABI in actmem_alloc.h and the CUDA
// functions the LD_PRELOAD shim interposes carry ACTMEM_EXPORT. tests/alloc_symbols_test checks
// the exported list, so a stray export fails the build's tests.
#pragma once

#if defined(__GNUC__)
#define ACTMEM_EXPORT __attribute__((visibility("default")))
#else
#define ACTMEM_EXPORT
#endif
