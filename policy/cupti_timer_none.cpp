// make_cupti_timer for builds without the CUDA toolkit (no ACTMEM_HAVE_CUPTI): never a timer.
#include "policy/segment_timer.h"

namespace actmem {

std::unique_ptr<SegmentTimer> make_cupti_timer(std::string* why) {
  if (why != nullptr) {
    *why =
        "actmem: CUPTI timer unavailable: built without CUPTI (the CUDA toolkit, or its CUPTI, was "
        "not found)";
  }
  return nullptr;
}

}  // namespace actmem
