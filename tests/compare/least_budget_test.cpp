// The least-budget search: within its resolution on synthetic boundaries, in few probes, and
// faster with the lower bounds a failure names.
#include <gtest/gtest.h>

#include <stdexcept>

#include "bench/compare/least_budget.h"

namespace actmem::bench {
namespace {

constexpr std::int64_t kMiB = 1 << 20;

// Fits every budget from `least` up; a failure names `hint` of the budget needed when asked to.
struct Boundary {
  std::int64_t least;
  bool hints = false;
  int calls = 0;
  BudgetProbe operator()(std::int64_t budget) {
    ++calls;
    if (budget >= least) return {true, 0};
    return {false, hints ? least - 3 * kMiB : 0};  // a lower bound, short of the truth
  }
};

TEST(LeastBudgetSearch, FindsTheBoundaryWithinTheResolution) {
  for (std::int64_t least : {1 * kMiB, 37 * kMiB + 5, 200 * kMiB, 511 * kMiB}) {
    Boundary boundary{least};
    const LeastBudget found =
        search_least_budget([&](std::int64_t b) { return boundary(b); }, 512 * kMiB, kMiB);
    EXPECT_GE(found.bytes, least);
    EXPECT_LE(found.bytes - least, kMiB);
    EXPECT_EQ(found.probes, boundary.calls);
    EXPECT_LE(found.probes, 10) << "bisection from 512 MiB to 1 MiB";
  }
}

TEST(LeastBudgetSearch, ALowerBoundAFailureNamesCutsTheSearch) {
  Boundary plain{300 * kMiB}, hinted{300 * kMiB, true};
  const auto run = [](Boundary& b) {
    return search_least_budget([&](std::int64_t budget) { return b(budget); }, 4096 * kMiB, kMiB);
  };
  const LeastBudget without = run(plain), with = run(hinted);
  EXPECT_EQ(with.bytes - 300 * kMiB <= kMiB, true);
  EXPECT_LT(with.probes, without.probes);
}

TEST(LeastBudgetSearch, RefusesAResolutionUnderOneByte) {
  Boundary boundary{100 * kMiB};
  EXPECT_THROW(search_least_budget([&](std::int64_t b) { return boundary(b); }, 200 * kMiB, 0),
               std::invalid_argument);
}

}  // namespace
}  // namespace actmem::bench
