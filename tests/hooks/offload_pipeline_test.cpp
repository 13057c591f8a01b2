// The offload pipeline (Note [Offload pipeline] in hooks/host_store.h), driven on CPU tensors
// through an engine whose copies finish only when the test says so: when a device block goes
// back, what is fetched ahead and in which order, what an unpack waits for and what counts as
// hidden. The same pipeline runs over the CUDA engine on a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "allocator/host_backend.h"
#include "copy/thread_copy_engine.h"
#include "hooks/actmem.h"
#include "hooks/host_store.h"

namespace actmem {
namespace {

// Copies wait in a queue until finish() runs them, in order; each takes 1 µs. Ordering a stream
// after a copy that has not run runs it and everything before it, and exposes each copy so run.
class ManualCopyEngine final : public copy::CopyEngine {
 public:
  static constexpr std::int64_t kCopyNs = 1000;

  Ticket copy(void* dst, const void* src, std::size_t bytes, alloc::Stream) override {
    queued_.push_back({dst, src, bytes});
    return ++issued_;
  }
  bool finished(Ticket ticket) override { return ticket <= done_; }
  void order_after(Ticket ticket, alloc::Stream) override { wait(ticket); }
  void wait(Ticket ticket) override {
    const Ticket before = done_;
    finish(ticket);
    exposed_ns_ += static_cast<std::int64_t>(done_ - before) * kCopyNs;
  }
  Time time() override { return {static_cast<std::int64_t>(done_) * kCopyNs, exposed_ns_}; }
  alloc::Stream stream() const override { return alloc::kDefaultStream; }
  const char* name() const override { return "manual"; }

  // Runs the queued copies up to `ticket`.
  void finish(Ticket ticket) {
    while (done_ < ticket && !queued_.empty()) {
      const Job job = queued_.front();
      queued_.pop_front();
      std::memcpy(job.dst, job.src, job.bytes);
      ++done_;
    }
  }
  void finish_all() { finish(issued_); }
  Ticket issued() const { return issued_; }
  // Where the destructor writes how far the copies had run.
  void report_done_at_end(std::shared_ptr<Ticket> done) { done_at_end_ = std::move(done); }
  ~ManualCopyEngine() override {
    if (done_at_end_) *done_at_end_ = done_;
  }

 private:
  struct Job {
    void* dst;
    const void* src;
    std::size_t bytes;
  };
  std::deque<Job> queued_;
  Ticket issued_ = 0, done_ = 0;
  std::int64_t exposed_ns_ = 0;
  std::shared_ptr<Ticket> done_at_end_;
};

constexpr std::int64_t kElements = 64 * 1024;  // 256 KiB of floats
constexpr std::int64_t kBytes = kElements * 4;

struct Pipeline {
  ManualCopyEngine* engine;
  std::unique_ptr<HostStore> store;
};

Pipeline pipeline(std::size_t window, std::optional<std::size_t> capacity = std::nullopt) {
  install();
  auto engine = std::make_unique<ManualCopyEngine>();
  ManualCopyEngine* raw = engine.get();
  HostStoreOptions options;
  options.capacity = capacity;
  options.prefetch_window = window;
  return {raw, std::make_unique<HostStore>(options, std::move(engine),
                                           std::make_unique<alloc::HostBackend>())};
}

std::int64_t device_bytes() { return device_memory().stats().allocated_bytes.current; }

TEST(OffloadPipeline, TheDeviceBlockGoesBackOnlyOnceItsCopyHasFinished) {
  Pipeline p = pipeline(0);
  torch::Tensor tensor = torch::randn({kElements});
  const torch::Tensor expected = tensor.clone();
  const torch::Tensor small = torch::zeros({16});
  const std::int64_t with_it = device_bytes();
  auto item = p.store->offload(tensor);
  ASSERT_TRUE(item);
  tensor = torch::Tensor();
  EXPECT_EQ(device_bytes(), with_it) << "held while its copy is queued";
  p.engine->finish_all();
  EXPECT_EQ(device_bytes(), with_it) << "released at the store's next call, not by the engine";
  auto other = p.store->offload(small);
  EXPECT_EQ(with_it - device_bytes(), kBytes) << "reaped: the block is back";
  const torch::Tensor back = p.store->take(item);
  EXPECT_TRUE(torch::equal(back, expected));
  const TransferStats stats = p.store->stats();
  EXPECT_EQ(stats.copies_to_host, 2);
  EXPECT_EQ(stats.bytes_to_host, kBytes + 16 * 4);
  EXPECT_EQ(stats.copies_to_device, 1);
  EXPECT_EQ(stats.bytes_to_device, kBytes);
}

TEST(OffloadPipeline, NowWaitsAndLetsGoAtOnce) {
  Pipeline p = pipeline(0);
  torch::Tensor tensor = torch::randn({kElements});
  const std::int64_t with_it = device_bytes();
  auto item = p.store->offload(tensor, /*now=*/true);
  tensor = torch::Tensor();
  EXPECT_EQ(with_it - device_bytes(), kBytes);
}

// Five items sent out in order 0..4; a window of two items. Taking 4 fetches 3 and 2 ahead (the
// most recent first), not 1 or 0; taking 3 finds its copy finished (hidden) and fetches 1; ...
TEST(OffloadPipeline, PrefetchRunsAheadInReversePackOrderWithinTheWindow) {
  Pipeline p = pipeline(2 * kBytes);
  std::vector<torch::Tensor> originals;
  std::vector<std::shared_ptr<HostStore::Item>> items;
  for (int i = 0; i < 5; ++i) {
    originals.push_back(torch::full({kElements}, static_cast<float>(i)));
    items.push_back(p.store->offload(originals.back()));
  }
  p.engine->finish_all();
  const std::int64_t before = device_bytes();

  torch::Tensor four = p.store->take(items[4]);
  TransferStats stats = p.store->stats();
  EXPECT_EQ(stats.copies_to_device, 3) << "4 itself, then 3 and 2 ahead";
  EXPECT_EQ(stats.prefetched, 2);
  EXPECT_EQ(stats.hidden, 0) << "4's copy was queued when it was needed";
  EXPECT_EQ(stats.copy_ns, 6 * ManualCopyEngine::kCopyNs) << "five out, and 4's back";
  EXPECT_EQ(stats.exposed_ns, ManualCopyEngine::kCopyNs) << "one copy run while waiting: 4's";
  EXPECT_EQ(device_bytes() - before, 3 * kBytes) << "4, and the window's two";

  p.engine->finish_all();  // the copies ahead finish while backward computes
  torch::Tensor three = p.store->take(items[3]);
  stats = p.store->stats();
  EXPECT_EQ(stats.hidden, 1) << "3 was there already";
  EXPECT_EQ(stats.copy_ns, 8 * ManualCopyEngine::kCopyNs) << "3 and 2 came back meanwhile";
  EXPECT_EQ(stats.exposed_ns, ManualCopyEngine::kCopyNs) << "nothing more waited";
  EXPECT_EQ(stats.prefetched, 3) << "1 joins the window, 2 is still in it";
  torch::Tensor two = p.store->take(items[2]);
  torch::Tensor one = p.store->take(items[1]);
  torch::Tensor zero = p.store->take(items[0]);
  p.engine->finish_all();
  stats = p.store->stats();
  EXPECT_EQ(stats.prefetched, 4);
  EXPECT_EQ(stats.copies_to_device, 5) << "each item came back once";
  EXPECT_EQ(stats.copy_ns, 10 * ManualCopyEngine::kCopyNs);
  EXPECT_EQ(stats.exposed_ns, 3 * ManualCopyEngine::kCopyNs)
      << "4, 1 and 0 were waited for: no compute ran between the last takes";
  EXPECT_DOUBLE_EQ(stats.hidden_fraction(), 0.7);
  const torch::Tensor* back[] = {&zero, &one, &two, &three, &four};
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(*back[i], originals[i])) << i;
}

// Under memory pressure (the scope's pressure handler): the device tensors held for copies out
// go first, the finished ones, then the oldest still running, waited for, until enough is free.
TEST(OffloadPipeline, UnderPressureTheSourcesOfCopiesOutGoOldestFirst) {
  Pipeline p = pipeline(0);
  std::vector<std::shared_ptr<HostStore::Item>> items;
  const std::int64_t none = device_bytes();
  for (int i = 0; i < 3; ++i) items.push_back(p.store->offload(torch::randn({kElements})));
  EXPECT_EQ(device_bytes() - none, 3 * kBytes) << "held while their copies are queued";
  p.engine->finish(1);
  EXPECT_EQ(p.store->release_sources(1), static_cast<std::size_t>(kBytes)) << "the finished one";
  EXPECT_EQ(device_bytes() - none, 2 * kBytes);
  EXPECT_EQ(p.engine->issued(), 3u);
  EXPECT_EQ(p.store->release_sources(kBytes), static_cast<std::size_t>(kBytes))
      << "the oldest running one, waited for; the newest stays";
  EXPECT_EQ(device_bytes() - none, kBytes);
  const torch::Tensor held = torch::randn({kElements});
  const std::int64_t with_held = device_bytes();
  items.push_back(p.store->offload(held));
  EXPECT_EQ(p.store->release_sources(4 * kBytes), static_cast<std::size_t>(kBytes))
      << "a tensor the program still holds frees nothing";
  EXPECT_EQ(device_bytes(), with_held - kBytes);
  for (int i = 3; i >= 0; --i) p.store->take(items[i]);
}

// A prefetch takes only room there is: under a budget it does not fit, the pressure handlers are
// not asked (they would send other tensors out to make room) and the take goes on without it.
TEST(OffloadPipeline, APrefetchThatDoesNotFitTheBudgetIsLeftForLater) {
  // 20 MiB items: each a segment of its own (classic layout) or ten granules (vmm).
  constexpr std::int64_t kLarge = std::int64_t{5} << 20;
  constexpr std::size_t kLargeBytes = std::size_t{20} << 20;
  Pipeline p = pipeline(2 * kLargeBytes);
  std::vector<std::shared_ptr<HostStore::Item>> items;
  for (int i = 0; i < 3; ++i) {
    items.push_back(p.store->offload(torch::full({kLarge}, static_cast<float>(i)), /*now=*/true));
  }
  alloc::CachingAllocator& device = device_memory();
  device.empty_cache();
  const alloc::AllocatorStats before = device.stats();
  int asked = 0;
  const auto handler = device.add_pressure_handler([&](std::size_t) {
    ++asked;
    return std::size_t{0};
  });
  // Room for the item taken (and a granule to spare for where it starts), not for another.
  const std::optional<std::size_t> budget = device.budget();
  device.set_budget(static_cast<std::size_t>(before.reserved_bytes.current) + kLargeBytes +
                    (std::size_t{2} << 20));
  torch::Tensor two;
  TransferStats stats;
  try {
    two = p.store->take(items[2]);
    stats = p.store->stats();
  } catch (...) {
    device.set_budget(budget);
    device.remove_pressure_handler(handler);
    throw;
  }
  device.set_budget(budget);
  device.remove_pressure_handler(handler);
  EXPECT_EQ(asked, 0) << "the handlers were not asked for a prefetch";
  EXPECT_EQ(device.stats().ooms, before.ooms) << "a prefetch that did not fit is no failure";
  EXPECT_EQ(stats.prefetched, 0);
  EXPECT_TRUE(torch::equal(two, torch::full({kLarge}, 2.0f)));
  EXPECT_TRUE(torch::equal(p.store->take(items[1]), torch::full({kLarge}, 1.0f)));
  EXPECT_EQ(p.store->stats().prefetched, 1) << "once there is room, 0 is fetched ahead again";
  EXPECT_TRUE(torch::equal(p.store->take(items[0]), torch::zeros({kLarge})));
}

// A store copies the tensors of its engine's device only (a CUDA store of another GPU's, here a
// CPU store of a meta tensor's): the others stay where they are.
TEST(OffloadPipeline, OnlyTensorsOfTheEnginesDeviceGoOut) {
  Pipeline p = pipeline(0);
  const torch::Tensor elsewhere = torch::empty({kElements}, torch::kMeta);
  EXPECT_FALSE(p.store->can_hold(elsewhere));
  EXPECT_EQ(p.store->offload(elsewhere), nullptr);
  EXPECT_TRUE(p.store->can_hold(torch::zeros({kElements})));
  EXPECT_EQ(p.engine->issued(), 0u);
}

TEST(OffloadPipeline, NoWindowMeansEachItemComesBackWhenTaken) {
  Pipeline p = pipeline(0);
  std::vector<std::shared_ptr<HostStore::Item>> items;
  for (int i = 0; i < 3; ++i) items.push_back(p.store->offload(torch::randn({kElements})));
  for (int i = 2; i >= 0; --i) p.store->take(items[i]);
  EXPECT_EQ(p.store->stats().prefetched, 0);
  EXPECT_EQ(p.store->stats().copies_to_device, 3);
}

TEST(OffloadPipeline, LayoutsComeBackAsTheyWent) {
  Pipeline p = pipeline(0);
  const torch::Tensor base = torch::randn({8, 16, 4});
  const torch::Tensor channels_last = base.permute({2, 0, 1});  // dense, other strides
  const torch::Tensor gappy = base.slice(1, 0, 16, 3);           // not dense: goes out dense
  // Attention's saved q: a permuted slice of one projection (found failing inductor's backward,
  // which asserts the strides its forward saw, when it came back dense).
  const torch::Tensor q = base.view({8, 4, 4, 4}).select(1, 1).permute({1, 0, 2});
  // Elements sharing memory: a broadcast row (a stride of 0) and overlapping windows.
  const torch::Tensor row = base.select(1, 0).unsqueeze(1).expand({8, 16, 4});
  const torch::Tensor windows = base.view({-1}).as_strided({60, 8}, {4, 1});
  const torch::Tensor empty = torch::zeros({0, 5});
  const torch::Tensor scalar = torch::tensor(3.5, torch::kDouble);
  for (const torch::Tensor& t :
       {channels_last, gappy, q, row, windows, empty, scalar, base.to(torch::kInt64)}) {
    auto item = p.store->offload(t);
    ASSERT_NE(item, nullptr) << t.sizes() << " " << t.strides();
    for (const torch::Tensor& back : {p.store->take(item), p.store->copy_back(*item)}) {
      EXPECT_EQ(back.sizes(), t.sizes());
      EXPECT_EQ(back.dtype(), t.dtype());
      EXPECT_EQ(back.strides(), t.strides());
      EXPECT_TRUE(torch::equal(back, t));
    }
  }
}

// Neither the host nor the allocator may hurry a copy: a block it writes or reads stays held,
// without a wait, until the copy has finished.
TEST(OffloadPipeline, AnItemGoneWithItsCopiesInFlightLeavesTheirBlocksUntilTheyFinish) {
  Pipeline p = pipeline(4 * kBytes);
  auto first = p.store->offload(torch::randn({kElements}));
  auto second = p.store->offload(torch::randn({kElements}));
  p.engine->finish_all();                            // both out
  const torch::Tensor back = p.store->take(second);  // waits for its copy; fetches first ahead
  const std::int64_t held = device_bytes();
  const copy::CopyEngine::Ticket last = p.engine->issued();
  first.reset();  // a graph dropped without its backward
  EXPECT_FALSE(p.engine->finished(last)) << "nothing waited for the copy";
  EXPECT_EQ(device_bytes(), held) << "the block fetched ahead is still being written";
  p.store->offload(torch::zeros({0}));  // a call of the store: its copies are still in flight
  EXPECT_EQ(device_bytes(), held);
  p.engine->finish_all();
  p.store->offload(torch::zeros({0}));  // the next call after they finished lets go
  EXPECT_EQ(held - device_bytes(), kBytes) << "first's block fetched ahead went back";
  EXPECT_EQ(p.engine->time().exposed_ns, ManualCopyEngine::kCopyNs) << "only second's was waited";
}

TEST(OffloadPipeline, AStoreGoneWithCopiesInFlightWaitsForThem) {
  Pipeline p = pipeline(4 * kBytes);
  auto first = p.store->offload(torch::randn({kElements}));
  auto second = p.store->offload(torch::randn({kElements}));
  const torch::Tensor back = p.store->take(second);
  first.reset();
  const copy::CopyEngine::Ticket last = p.engine->issued();
  ASSERT_FALSE(p.engine->finished(last));
  auto done_at_end = std::make_shared<copy::CopyEngine::Ticket>(0);
  p.engine->report_done_at_end(done_at_end);
  second.reset();
  p.store.reset();
  EXPECT_EQ(*done_at_end, last) << "the copy writing first's block finished before it went back";
}

TEST(OffloadPipeline, APoolAtItsCapRefusesAndCounts) {
  Pipeline p = pipeline(0, /*capacity=*/0);
  EXPECT_EQ(p.store->offload(torch::randn({kElements})), nullptr);
  EXPECT_EQ(p.store->stats().refused, 1);
  EXPECT_EQ(p.engine->issued(), 0u) << "nothing was queued";
}

// The pipeline over the asynchronous thread engine, with copies really beside the caller: every
// item comes back bit for bit, prefetched or not, and nothing is lost at the end.
TEST(OffloadPipeline, OverTheThreadEngineEveryItemComesBackExactly) {
  install();
  HostStoreOptions options;
  options.prefetch_window = 3 * kBytes;
  HostStore store(options, std::make_unique<copy::ThreadCopyEngine>(),
                  std::make_unique<alloc::HostBackend>());
  std::vector<torch::Tensor> originals;
  std::vector<std::shared_ptr<HostStore::Item>> items;
  for (int i = 0; i < 32; ++i) {
    originals.push_back(torch::randn({kElements}));
    items.push_back(store.offload(originals.back()));
  }
  for (int i = 31; i >= 0; --i) EXPECT_TRUE(torch::equal(store.take(items[i]), originals[i])) << i;
  const TransferStats stats = store.stats();
  EXPECT_EQ(stats.copies_to_device, 32);
  EXPECT_GT(stats.prefetched, 0);
  items.clear();
  EXPECT_EQ(store.pool().stats().allocated_bytes.current, 0) << "every host block went back";
}

// The pipeline under a scope, through the inline engine that the CPU build uses: offload with a
// prefetch window trains to the same bits as keep.
// A custom Function's backward (as code torch.compile generates) may rely on the strides of what
// it saved: an offloaded slice comes back to it with them. LibTorch's own formulas get the dense
// layout, which takes less memory (Note [Offloaded tensors come back laid out as they went]).
struct ScaleBySavedSlice : torch::autograd::Function<ScaleBySavedSlice> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& slice) {
    ctx->save_for_backward({slice});
    return x * slice;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor slice = ctx->get_saved_variables()[0];
    seen_strides = slice.strides().vec();
    return {grads[0] * slice, torch::Tensor()};
  }
  static inline std::vector<std::int64_t> seen_strides;
};

TEST(OffloadPipeline, ACustomFunctionsBackwardGetsItsSavedSliceWithItsStrides) {
  install();
  const torch::Tensor x = torch::randn({64, 64}, torch::requires_grad());
  const torch::Tensor base = torch::randn({64, 3, 64});
  const torch::Tensor slice = base.select(1, 1);  // strides {192, 1}: gaps between its rows
  ScopeOptions options;
  options.offload_min_bytes = 0;
  ActivationScope scope(make_policy("offload"), options);
  ScaleBySavedSlice::apply(x, slice).sum().backward();
  EXPECT_EQ(scope.stats().tensors_offloaded, 1);
  EXPECT_EQ(ScaleBySavedSlice::seen_strides, slice.strides().vec());
  EXPECT_TRUE(torch::equal(x.grad(), slice));
}

TEST(OffloadPipeline, WithAWindowAScopeTrainsLikeKeep) {
  install();
  auto train = [](const char* policy, std::optional<std::size_t> window) {
    torch::manual_seed(3);
    torch::nn::Sequential net(torch::nn::Linear(64, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 8));
    ScopeOptions options;
    options.offload_min_bytes = 0;
    options.prefetch_window = window;
    ActivationScope scope(make_policy(policy), options);
    const torch::Tensor x = torch::randn({128, 64});
    for (int step = 0; step < 2; ++step) {
      net->zero_grad();
      net->forward(x).pow(2).mean().backward();
    }
    std::vector<torch::Tensor> grads;
    for (const torch::Tensor& p : net->parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(grads, scope.stats());
  };
  const auto keep = train("keep", std::nullopt);
  const auto offload = train("offload", std::size_t{1} << 20);
  for (std::size_t i = 0; i < keep.first.size(); ++i) {
    EXPECT_TRUE(torch::equal(offload.first[i], keep.first[i])) << i;
  }
  EXPECT_GT(offload.second.transfers.prefetched, 0);
  EXPECT_EQ(offload.second.transfers.copies_to_device, offload.second.transfers.copies_to_host);
}

// Note [The device a scope serves]: the first tensor of the managed kind packed under a scope
// decides the device it serves; a scope just made touches none, and tensors of other kinds (meta
// tensors here) decide nothing. (Two GPUs: CudaOffload.AScopeServesTheGpuOfItsTensors….)
TEST(ScopeDevice, TheFirstTensorOfTheManagedKindDecidesTheDeviceAScopeServes) {
  install();
  ScopeOptions options;
  options.offload_min_bytes = 0;
  ActivationScope scope(make_policy("offload"), options);
  EXPECT_FALSE(scope.device().has_value()) << "a scope just made serves no device yet";
  const torch::Tensor on_meta = torch::randn({64, 64}, torch::kMeta).requires_grad_();
  on_meta.mm(on_meta).tanh().sum().backward();  // (relu has no meta kernel)
  EXPECT_FALSE(scope.device().has_value()) << "meta tensors are not of the managed kind";
  EXPECT_EQ(scope.stats().transfers.copies_to_host, 0);
  const torch::Tensor w =
      torch::randn({64, 64}, torch::TensorOptions().device(managed_device())).requires_grad_();
  w.mm(w).tanh().sum().backward();
  ASSERT_TRUE(scope.device().has_value());
  EXPECT_EQ(scope.device()->type(), managed_device());
  EXPECT_GT(scope.stats().transfers.copies_to_host, 0);
}

}  // namespace
}  // namespace actmem
