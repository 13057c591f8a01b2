#include <sstream>

#include "hooks/activation_scope.h"

namespace actmem {

std::string to_json(const ActivationStats& s) {
  std::ostringstream out;
  const TransferStats& t = s.transfers;
  out << "{\"packed\":" << s.packed << ",\"unpacked\":" << s.unpacked
      << ",\"tensors_kept\":" << s.tensors_kept << ",\"bytes_kept\":" << s.bytes_kept
      << ",\"tensors_offloaded\":" << s.tensors_offloaded
      << ",\"bytes_offloaded\":" << s.bytes_offloaded
      << ",\"tensors_recomputed\":" << s.tensors_recomputed
      << ",\"bytes_recomputed\":" << s.bytes_recomputed
      << ",\"offload_fallbacks\":" << s.offload_fallbacks
      << ",\"recomputations\":" << s.recomputations << ",\"recompute_ns\":" << s.recompute_ns
      << ",\"evictions\":" << s.evictions << ",\"bytes_evicted\":" << s.bytes_evicted
      << ",\"drops\":" << s.drops << ",\"bytes_dropped\":" << s.bytes_dropped
      << ",\"steps\":" << s.steps << ",\"transfers\":{\"bytes_to_host\":" << t.bytes_to_host
      << ",\"bytes_to_device\":" << t.bytes_to_device
      << ",\"copies_to_host\":" << t.copies_to_host
      << ",\"copies_to_device\":" << t.copies_to_device << ",\"prefetched\":" << t.prefetched
      << ",\"hidden\":" << t.hidden << ",\"refused\":" << t.refused
      << ",\"copy_ns\":" << t.copy_ns << ",\"exposed_ns\":" << t.exposed_ns << "}}";
  return out.str();
}

}  // namespace actmem
