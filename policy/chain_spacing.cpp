#include "policy/chain_spacing.h"

#include <algorithm>
#include <cmath>

namespace actmem {

double ChainSpacing::Seen::ratio() const {
  if (links == 0 || segments == 0 || saved_bytes == 0 || input_bytes == 0) return 0;
  const double input = static_cast<double>(input_bytes) / static_cast<double>(links);
  const double saved = static_cast<double>(saved_bytes) / static_cast<double>(segments);
  return saved / input;
}

std::int64_t ChainSpacing::Seen::uniform_k() const {
  const double c = ratio();
  if (c <= 0) return 1;
  const double k = std::sqrt(static_cast<double>(longest_run) / c);
  return std::clamp<std::int64_t>(std::llround(k), 1, std::max<std::int64_t>(1, longest_run));
}

void ChainSpacing::saw(const SavedTensorInfo& tensor) {
  if (tensor.order == 0 && seeing_.segments > 0) {
    learned_k_ = seeing_.uniform_k();
    seeing_ = {};
    last_segment_.clear();
    last_link_segment_.clear();
    last_link_position_ = -1;
  }
  if (tensor.segment.empty() || tensor.is_leaf) return;
  if (tensor.segment != last_segment_) ++seeing_.segments;
  last_segment_ = tensor.segment;
  seeing_.saved_bytes += tensor.bytes;
}

bool ChainSpacing::drops(const SegmentLink& link) {
  const bool same_segment =
      link.segment == last_link_segment_ && link.position == last_link_position_;
  if (same_segment) {
    seeing_.input_bytes += link.bytes;  // the segment's linked inputs, together
    return last_answer_;
  }
  ++seeing_.links;
  seeing_.input_bytes += link.bytes;
  seeing_.longest_run = std::max(seeing_.longest_run, link.position + 1);
  last_link_segment_ = link.segment;
  last_link_position_ = link.position;
  last_answer_ = decide(link.position);
  return last_answer_;
}

bool ChainSpacing::decide(std::int64_t position) const {
  // Nothing dropped before a whole step was seen (chain_spacing.h says why).
  return learned_k_ > 1 && position % learned_k_ != 0;
}

}  // namespace actmem
