// CUPTI activity records -> SegmentTimes. See cupti_records.h.
#include "policy/cupti_records.h"

#include <stdexcept>

namespace actmem::detail {

// Note [CUPTI record versions]: the fields read sit where the oldest supported version has them.
#define ACTMEM_SAME_OFFSET(A, B, field) \
  static_assert(offsetof(A, field) == offsetof(B, field), #field " moved between " #A " and " #B)
ACTMEM_SAME_OFFSET(CuptiKernelRecord, CUpti_ActivityKernel9, kind);
ACTMEM_SAME_OFFSET(CuptiKernelRecord, CUpti_ActivityKernel9, start);
ACTMEM_SAME_OFFSET(CuptiKernelRecord, CUpti_ActivityKernel9, end);
ACTMEM_SAME_OFFSET(CuptiKernelRecord, CUpti_ActivityKernel9, correlationId);
ACTMEM_SAME_OFFSET(CuptiMemcpyRecord, CUpti_ActivityMemcpy5, copyKind);
ACTMEM_SAME_OFFSET(CuptiMemcpyRecord, CUpti_ActivityMemcpy5, bytes);
ACTMEM_SAME_OFFSET(CuptiMemcpyRecord, CUpti_ActivityMemcpy5, start);
ACTMEM_SAME_OFFSET(CuptiMemcpyRecord, CUpti_ActivityMemcpy5, end);
#undef ACTMEM_SAME_OFFSET

namespace {

// Device timestamps, or nothing when CUPTI could not take them (0) or they make no sense.
bool timed(std::uint64_t start, std::uint64_t end) { return start != 0 && end >= start; }

}  // namespace

void CuptiRecords::add(const CUpti_Activity& record) {
  switch (record.kind) {
    case CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION: {
      const auto& r = reinterpret_cast<const CUpti_ActivityExternalCorrelation&>(record);
      if (r.externalKind != kSegmentCorrelationKind) return;
      if (segment_of_.size() >= max_held_) {
        ++lost_;
        return;
      }
      segment_of_[r.correlationId] = r.externalId;
      return;
    }
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
      const auto& r = reinterpret_cast<const CuptiKernelRecord&>(record);
      if (!timed(r.start, r.end)) {
        ++lost_;  // its time is not known: the segment's would undercount
        return;
      }
      if (kernels_.size() >= max_held_) {
        ++lost_;
        return;
      }
      kernels_.emplace_back(r.correlationId, static_cast<std::int64_t>(r.end - r.start));
      return;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const auto& r = reinterpret_cast<const CuptiMemcpyRecord&>(record);
      if (r.copyKind != CUPTI_ACTIVITY_MEMCPY_KIND_HTOD &&
          r.copyKind != CUPTI_ACTIVITY_MEMCPY_KIND_DTOH) {
        return;
      }
      if (!timed(r.start, r.end)) {
        ++lost_;
        return;
      }
      copy_bytes_ += static_cast<std::int64_t>(r.bytes);
      copy_ns_ += static_cast<std::int64_t>(r.end - r.start);
      return;
    }
    default:
      return;  // RUNTIME and DRIVER records: there only for the external correlations
  }
}

void CuptiRecords::fail(std::string error) {
  if (error_.empty()) error_ = std::move(error);
}

SegmentTimes CuptiRecords::take(std::int64_t dropped) {
  SegmentTimes times;
  for (const auto& [correlation, ns] : kernels_) {
    auto segment = segment_of_.find(correlation);
    if (segment != segment_of_.end()) times.forward_ns[segment->second] += ns;
  }
  times.copy_bytes = copy_bytes_;
  times.copy_ns = copy_ns_;
  times.dropped_records = dropped + lost_;
  std::string error = std::move(error_);
  *this = CuptiRecords(max_held_);
  if (!error.empty()) throw std::runtime_error("actmem: CUPTI timer: " + error);
  return times;
}

}  // namespace actmem::detail
