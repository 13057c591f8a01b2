// Which links recompute chains drop (policy/chain_spacing.h): a segment's links get one answer,
// none is dropped while the run's length is unknown, and after a whole step the spacing is uniform
// at k = √(n / c).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "policy/chain_spacing.h"

namespace actmem {
namespace {

// One step of `segments` linked segments, each saving `saved` bytes and taking `links` inputs of
// `input` bytes each from the one before; returns which segments dropped their inputs.
std::vector<bool> step(ChainSpacing& spacing, int segments, std::int64_t saved, int links,
                       std::int64_t input) {
  std::vector<bool> dropped(segments, false);
  std::int64_t order = 0;
  for (int s = 0; s < segments; ++s) {
    const std::string name = "s" + std::to_string(s);
    if (s > 0) {
      for (int l = 0; l < links; ++l) {
        SegmentLink link{name, "s" + std::to_string(s - 1), s, input};
        const bool drops = spacing.drops(link);
        if (l == 0) dropped[s] = drops;
        EXPECT_EQ(drops, dropped[s]) << name << ": one answer for all of a segment's links";
      }
    }
    SavedTensorInfo tensor;
    tensor.segment = name;
    tensor.bytes = saved;
    tensor.order = order++;
    spacing.saw(tensor);
  }
  return dropped;
}

int count(const std::vector<bool>& dropped) {
  int n = 0;
  for (bool d : dropped) n += d;
  return n;
}

TEST(ChainSpacing, AfterAStepItKeepsEveryKthInputWithKFromTheRunAndTheBytes) {
  ChainSpacing spacing;
  step(spacing, 64, /*saved=*/4, /*links=*/1, /*input=*/1);  // c = 4, n = 64: k = 4
  const std::vector<bool> dropped = step(spacing, 64, 4, 1, 1);
  EXPECT_EQ(spacing.learned_k(), 4);
  for (int s = 1; s < 64; ++s) EXPECT_EQ(dropped[s], s % 4 != 0) << s;
}

TEST(ChainSpacing, ASegmentWithSeveralLinksDropsAllOrNone) {
  ChainSpacing spacing;
  for (int i = 0; i < 3; ++i) {
    const int dropped = count(step(spacing, 16, 2, /*links=*/2, 1));  // the EXPECTs are inside
    if (i > 0) {
      EXPECT_GT(dropped, 0) << "step " << i << ": k = 4 was learned";
    }
  }
}

// Before a whole step has been seen, per-segment recompute: dropping links while n is unknown
// held more than recompute where it was measured (chain_spacing.h).
TEST(ChainSpacing, TheFirstStepDropsNothingAndTheSecondDropsAllButEveryKth) {
  ChainSpacing spacing;
  EXPECT_EQ(count(step(spacing, 101, /*saved=*/1, 1, /*input=*/1)), 0);  // c = 1
  EXPECT_EQ(spacing.learned_k(), 0) << "no whole step seen yet";
  const std::vector<bool> dropped = step(spacing, 101, 1, 1, 1);
  EXPECT_EQ(spacing.learned_k(), 10);  // √(101 / 1), the run's 100 links and its first segment
  EXPECT_EQ(count(dropped), 90);
}

TEST(ChainSpacing, SegmentsThatSaveFarMoreThanTheirInputKeepEveryInput) {
  ChainSpacing spacing;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(count(step(spacing, 8, /*saved=*/1000, 1, /*input=*/1)), 0) << "step " << i;
  }
}

}  // namespace
}  // namespace actmem
