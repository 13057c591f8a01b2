// Internal to the CUPTI timer (cupti_timer.cpp): the activity records it gathers between two
// collect()s and how they become SegmentTimes. In a header of its own so that this arithmetic is
// tested without a device, on records built by hand. Needs CUPTI's headers: compiled only with
// ACTMEM_HAVE_CUPTI, and not installed.
//
// Note [CUPTI segment attribution]
// A kernel's record says when it ran on the device but not which segment launched it; the link is
// CUPTI's external correlation. begin(id) pushes `id` on the calling thread's CUPTI stack of
// CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0 ids, end(id) pops it. While an id is on top, CUPTI
// writes, before the record of each runtime or driver API call the thread makes, an
// EXTERNAL_CORRELATION record {correlationId of the call -> externalId = id}; the kernel that call
// launched gets a CONCURRENT_KERNEL record with the same correlationId. So three record kinds meet:
//   EXTERNAL_CORRELATION  correlationId -> segment id  (emitted only for API records, so RUNTIME
//   RUNTIME, DRIVER       the API calls                 and DRIVER are enabled though not read)
//   CONCURRENT_KERNEL     correlationId, start, end
// Records arrive in buffers that CUPTI hands back in no promised order (a kernel's buffer may come
// before the buffer holding its correlation), so kernels are kept with their correlation id and
// attributed in take(), once collect() has flushed everything completed; kernels whose correlation
// maps to no segment (launched outside every bracket) are dropped then. Copies (MEMCPY records,
// host<->device) are summed as they come: they serve the copy bandwidth, whatever segment issued
// them.
//
// Note [CUPTI record versions]
// CUPTI extends a record kind by adding a struct version (CUpti_ActivityKernel9, 10, 11...;
// CUpti_ActivityMemcpy5, 6), new fields appended; the loaded libcupti writes its own version, which
// may differ from the header's. Only leading fields are read (kernel: start, end, correlationId;
// memcpy: copyKind, bytes, start, end), at the same offsets in every version since CUDA 12.0
// (static_asserts in cupti_records.cpp check it against the versions this header declares),
// through the header's newest typedef; cuptiActivityGetNextRecord steps over each record by its
// real size.
#pragma once

#include <cupti_activity.h>
#include <cupti_version.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "policy/segment_timer.h"

namespace actmem::detail {

#if CUPTI_API_VERSION >= 130200  // CUDA 13.2
using CuptiKernelRecord = CUpti_ActivityKernel11;
#elif CUPTI_API_VERSION >= 130000  // CUDA 13.0
using CuptiKernelRecord = CUpti_ActivityKernel10;
#elif CUPTI_API_VERSION >= 19      // CUDA 12.0
using CuptiKernelRecord = CUpti_ActivityKernel9;
#else
#error "actmem's CUPTI timer needs the CUPTI of CUDA 12.0 or newer"
#endif
#if CUPTI_API_VERSION >= 26  // CUDA 12.8 (13.x counts from 130000)
using CuptiMemcpyRecord = CUpti_ActivityMemcpy6;
#else
using CuptiMemcpyRecord = CUpti_ActivityMemcpy5;
#endif

inline constexpr CUpti_ExternalCorrelationKind kSegmentCorrelationKind =
    CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0;

// Not thread-safe: the timer guards it.
class CuptiRecords {
 public:
  // Kernels and correlations held at once; beyond, records count as lost, so a timer left running
  // without collect() cannot grow without bound.
  static constexpr std::size_t kDefaultMaxHeld = std::size_t{1} << 22;
  explicit CuptiRecords(std::size_t max_held = kDefaultMaxHeld) : max_held_(max_held) {}

  // One record from an activity buffer; kinds other than those above are ignored.
  void add(const CUpti_Activity& record);
  // Records that could not be read (CUPTI_ERROR_INVALID_KIND ends a buffer's readable part).
  void add_lost(std::int64_t records) { lost_ += records; }
  // A failure inside CUPTI's callback, where nothing can be thrown: the first is kept for take().
  void fail(std::string error);

  // What the records added since the last take() measured, kernels attributed through the
  // correlations seen by now; `dropped` (CUPTI's own count) is added to the lost records. Then
  // starts afresh. Throws std::runtime_error with the failure recorded, if any (and still starts
  // afresh).
  SegmentTimes take(std::int64_t dropped);

 private:
  std::size_t max_held_;
  std::unordered_map<std::uint32_t, std::uint64_t> segment_of_;  // correlationId -> segment id
  std::vector<std::pair<std::uint32_t, std::int64_t>> kernels_;  // correlationId, device ns
  std::int64_t copy_bytes_ = 0;
  std::int64_t copy_ns_ = 0;
  std::int64_t lost_ = 0;
  std::string error_;
};

}  // namespace actmem::detail
