// How long each checkpoint segment's forward took during a profiled step, for the auto policy's
// profiler. Torch-free. Two sources behind one interface:
//   clocks  steady_clock around each bracket: right on CPU, where an op has finished when it
//           returns (make_clock_timer; always available);
//   CUPTI   on CUDA, where kernels run after the call that launched them returns: CUPTI's activity
//           API records each kernel's and each copy's device start and end, and the records are
//           attributed to segments (make_cupti_timer; built whenever the CUDA toolkit is found,
//           answers only where a device and CUPTI do).
//
// The contract, for both:
// - begin(id) / end(id) bracket one segment's forward on the calling thread. Ids are the caller's
//   (any value; the same id may be bracketed many times and its times add up). Brackets nest, on
//   each thread separately; end(id) closes the innermost open bracket of `id` on that thread, and
//   brackets opened inside it and never closed (a segment whose forward threw) are closed with it
//   and count for nothing. end(id) with no open bracket of `id` on the calling thread throws
//   std::logic_error.
// - What a bracket counts. Clocks: its wall time, each bracket on its own (an outer segment's time
//   includes its inner segments'). CUPTI: the device time of the kernels launched inside it, each
//   kernel going to the innermost open bracket (an outer segment's time excludes its inner ones'),
//   summed (kernels overlapping on several streams each count); launch overhead is not device time.
//   Kernels launched outside every bracket count for no segment.
// - collect() returns what was measured since the previous collect() (or since creation) and
//   starts afresh. Clocks: a bracket still open counts when it ends, in a later collect(). CUPTI:
//   when it recorded anything, it synchronises the device and flushes CUPTI's buffers first
//   (CUPTI delivers only records of completed work; a kernel delivered in a later collect() than
//   its launch's correlation counts for no segment).
// - Every method may be called from any thread; begin/end from several threads at once.
// - A failing CUPTI call throws std::runtime_error (from begin, end or collect) naming the call and
//   CUPTI's own message.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

namespace actmem {

// What a timer measured since the last collect(): per segment id, the time its forward took; and
// the host<->device copies it saw (bytes and time), for the copy bandwidth.
struct SegmentTimes {
  std::unordered_map<std::uint64_t, std::int64_t> forward_ns;
  // Host-to-device and device-to-host copies (any stream, in a bracket or not). Clocks see no
  // copies: 0, and the caller measures its own.
  std::int64_t copy_bytes = 0;
  std::int64_t copy_ns = 0;
  // CUPTI records lost (no buffer space, unreadable, or without timestamps): when non-zero, the
  // times above undercount.
  std::int64_t dropped_records = 0;
};

class SegmentTimer {
 public:
  virtual ~SegmentTimer() = default;
  virtual const char* name() const = 0;  // "clock" or "cupti"
  virtual void begin(std::uint64_t id) = 0;
  virtual void end(std::uint64_t id) = 0;
  virtual SegmentTimes collect() = 0;
};

// steady_clock around each bracket. Any number may exist.
std::unique_ptr<SegmentTimer> make_clock_timer();

// CUPTI's activity API: concurrent-kernel and memcpy records, attributed to segments through
// external correlation ids (each bracket pushes its id as CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0;
// CUPTI then precedes the record of each runtime and driver API call made inside it with one
// mapping the call's correlation id to the id). Returns nullptr, with the reason in *why when `why`
// is not null, when built without CUDA, when no device answers (cudaGetDeviceCount failing or
// finding none), or when CUPTI refuses (a cuptiActivity* call failing). CUPTI's buffers and
// callbacks are global to the process, so only one CUPTI timer may exist at a time: while one
// does, another call returns nullptr with that reason. Another CUPTI client in the process
// (torch.profiler, Nsight Systems) takes the same callbacks: do not profile with both at once.
// CUPTI records every runtime and driver call, kernel and copy (a little cost per launch, and
// memory until collect(), capped) from the first begin() on, until a collect() finds no bracket
// open: work outside the brackets of the steps measured costs nothing. Destroy it with every
// bracket closed (other threads' open brackets stay on their CUPTI stacks).
std::unique_ptr<SegmentTimer> make_cupti_timer(std::string* why);

}  // namespace actmem
