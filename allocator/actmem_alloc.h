/* actmem's C ABI: the only symbols libactmem_alloc.so exports.
 *
 * actmem_torch_malloc / actmem_free have exactly the signatures PyTorch's pluggable allocator
 * expects:
 *
 *   torch.cuda.memory.CUDAPluggableAllocator("libactmem_alloc.so", "actmem_torch_malloc",
 *                                            "actmem_free")
 *
 * Configuration comes from the environment, read once when the library loads (see README.md:
 * ACTMEM_BACKEND, ACTMEM_BUDGET, ACTMEM_ALLOC_CONF, ACTMEM_STATS, ACTMEM_TRACE). A malformed value
 * stops the process at load with a message that names the variable; it is never ignored.
 *
 * Contracts:
 * - actmem_malloc returns a pointer aligned to 512 bytes, usable on `stream`, or NULL when the
 *   request cannot be met within the budget; the reason is then printed to stderr and kept for
 *   actmem_last_error(). size 0 returns NULL and allocates nothing.
 * - actmem_free(NULL, ...) does nothing. Freeing a pointer actmem_malloc did not return (a double
 *   free, a foreign or interior pointer) prints what is wrong and aborts: continuing would corrupt
 *   the pools.
 * - All functions are thread-safe. Memory freed on `stream` is reused by later requests on the same
 *   stream only (each stream has its own pool); with actmem_record_stream, only after the work
 *   queued on the recorded streams at free time completes. cudaStreamPerThread, a different stream
 *   on each thread, has no pool: its memory is reused only after the work queued before its free
 *   on every blocking stream completes (an event on the legacy default stream).
 * - `device` selects one allocator per device (ignored by the host backend).
 */
#ifndef ACTMEM_ALLOC_H_
#define ACTMEM_ALLOC_H_

#include <stddef.h>

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The same type as CUDA's cudaStream_t, declared here so that this header needs no CUDA headers.
 * Redeclaring an identical typedef after cuda_runtime.h is valid C11 and C++. */
typedef struct CUstream_st* cudaStream_t;

ACTMEM_EXPORT void* actmem_malloc(size_t size, int device, cudaStream_t stream);
ACTMEM_EXPORT void actmem_free(void* ptr, size_t size, int device, cudaStream_t stream);

/* actmem_malloc for PyTorch's CUDAPluggableAllocator, which uses what its function returns without
 * checking it (a NULL would become a tensor at address 0, and the first kernel to touch it an
 * illegal-address error that ends the CUDA context): where actmem_malloc returns NULL, this throws
 * a C++ std::runtime_error with the same message (PyTorch raises it as a RuntimeError). Only for
 * callers in C++ that catch exceptions. */
ACTMEM_EXPORT void* actmem_torch_malloc(size_t size, int device, cudaStream_t stream);

/* Marks `ptr` as used on `stream`: after it is freed, it is reused only once the work queued on
 * `stream` at free time has completed. */
ACTMEM_EXPORT void actmem_record_stream(void* ptr, int device, cudaStream_t stream);

/* Statistics of every device's allocator as a JSON object. The string stays valid until the next
 * call of actmem_stats_json on the same thread. */
ACTMEM_EXPORT const char* actmem_stats_json(void);

/* Returns cached, unused segments of every device to the backend. A segment the backend will not
 * take back (cudaFree failing) stays cached; the error is printed and kept for actmem_last_error. */
ACTMEM_EXPORT void actmem_empty_cache(void);

/* Caps the bytes reserved on `device`; 0 removes the cap. Memory already reserved above a lowered
 * budget is released as it becomes free. */
ACTMEM_EXPORT void actmem_set_budget(int device, size_t bytes);
/* The cap on `device`, or 0 when there is none. */
ACTMEM_EXPORT size_t actmem_get_budget(int device);

/* The message of the last failed actmem_malloc, actmem_empty_cache or actmem_set_budget on this
 * thread, or NULL. */
ACTMEM_EXPORT const char* actmem_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* ACTMEM_ALLOC_H_ */
