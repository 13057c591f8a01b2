#include "policy/auto_policy.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace actmem {

// Note [Auto plan]
// ~~~~~~~~~~~~~~~~
// Input: one profiled step: every tensor kept when no budget is set; under a budget, every tensor
// that can go out offloaded at pack (the rest kept, and evicted under pressure if need be), so
// that the profiled step itself fits. Its timeline is the device bytes allocated at each pack and
// unpack and, from the allocator's trace, the most allocated until the next event (the working
// sets of the ops in between); what the step sent out (at pack, or evicted under pressure) is added
// back over the time keep would have held it, so the timeline planned from is keep's. A segment's
// forward time is measured less the copies made inside it. Output: an action per candidate, where
// a candidate is either
//   - a segment: all its saved tensors recomputed (cost: the segment's forward time, paid once
//     in backward) or offloaded (cost: the copies, 2 x bytes / bandwidth, less the compute they
//     overlap when copies run on a side stream; on CPU they are synchronous and hide nothing), or
//   - one tensor outside any segment: offloaded (same cost), or kept.
// A candidate frees its bytes from its first pack (a recomputed segment: from the end of its
// forward, which holds what it saved until then) to its first unpack: a recomputed segment comes
// back whole when backward first reaches it, and an offloaded tensor is prefetched before it is
// used. Its bytes count only storages that nothing but saved tensors held when backward began
// (the hooks check each storage's reference count then), that it alone saved, and never a
// segment's inputs, which the segment keeps for its rerun: what a choice can really free.
//
// Recompute chains (policy.h's SegmentLink): a recomputed segment whose input the recomputed
// segment before it returned may drop that input; the storage then leaves the device from its
// first pack until the chain's rerun, and the rerun brings back every segment of the chain at
// once: at the first unpack of any of them, which is the last one's. Dropping a link costs no
// time (each segment reruns once either way); what it changes is the shape of the timeline:
// fewer inputs held through the forward, more saved tensors back at once in backward. A link's
// bytes are its storages that only the two segments saved (the producer's last op may save its
// output too): neither segment's own recompute frees them, since the consumer holds its input.
//
// Greedy, cheapest seconds per byte first: find the simulated peak; among candidates that are
// out of memory at that moment and not chosen yet, take the one with the least cost per byte it
// frees (recompute or offload, whichever is cheaper for a segment; offload only while the host
// pool, whose offloaded bytes are simulated the same way, has room for it); re-simulate; stop when
// the peak is under the target or no candidate is left. The target is keep's peak when keep's
// reserved bytes fit the budget, else the budget less the allocator's overhead (what it reserves
// above the most allocated: segment slack, cached segments) and a margin. The greedy is not
// optimal (the choice is a knapsack over intervals) but each step is the locally cheapest byte,
// and the re-simulation after each choice keeps it from paying for bytes that stop mattering
// once the peak moves. When no candidate is out at the peak any more, the plan tries chains:
// for each run of droppable links (both segments recomputed, each link's consumer the next one's
// producer) it drops every link but each k-th, as Chen et al. 2016 do, with the k from 1 (none
// dropped) to the run's length (all) that gives the lowest simulated peak, the other runs as they
// are; then the greedy goes on from the new peak. Runs of m links cost m + 1 simulations.
//
// The minimum is the peak with every candidate out, the way that frees most; the plan table shows
// it. A plan can still cross the budget (the profile misses memory inside ops, and the budget caps
// reserved bytes): the hooks' pressure handler then evicts kept tensors. What the planned steps
// show feeds the next plan of their shape (PlanTuning): a step that needed evictions raises the
// margin; one that sent tensors out and left room under the budget lowers the overhead assumed
// (the profiled step's pattern, everything sent out, is not the plan's) by half that room; a step
// that starts with
// more allocated than the profiled one (often a job's first step, before the optimizer's state
// exists) moves keep's timeline by the difference. A budget too small for any plan fails when
// nothing is left to evict, with an error naming the budget the step needs at that point.

namespace {

struct Candidate {
  std::string segment;
  std::int64_t order = -1;
  std::int64_t recompute_bytes = 0;  // what dropping its tensors frees (a segment's inputs stay)
  std::int64_t offload_bytes = 0;    // what offloading its tensors frees (small ones stay)
  // What offloading it puts in the host pool: a copy of each saved tensor the hooks would send
  // (two saved over one storage are two copies), whether or not that frees device bytes.
  std::int64_t host_bytes = 0;
  std::int64_t start = 0, end = 0;   // events [start, end) during which it is out
  // Recomputed, it is out from the end of its segment's forward (ForwardEnds) instead.
  std::int64_t recompute_start = 0;
  std::int64_t start_for(Action action) const {
    return action == Action::kRecompute ? recompute_start : start;
  }
  double recompute_seconds = std::numeric_limits<double>::infinity();
  double offload_seconds = std::numeric_limits<double>::infinity();
};

// A segment's linked inputs, as a plan may drop them for a chain.
struct LinkCandidate {
  std::size_t consumer = 0, producer = 0;  // indices of the two segments' candidates
  std::int64_t bytes = 0;                  // what dropping frees
  std::int64_t start = 0;                  // the first pack over those storages
};

// What sending `t` out frees when nothing else holds its storage: the storage, a view's included.
std::int64_t freed_bytes(const ProfiledTensor& t) { return std::max(t.bytes, t.storage_bytes); }

// The most allocated at event e and until the next: its level, or its peak where the allocator's
// trace gave one (the working set of the ops in between).
std::int64_t observed(const StepProfile& profile, std::size_t e) {
  return e < profile.peaks.size() ? std::max(profile.levels[e], profile.peaks[e])
                                  : profile.levels[e];
}

// The most allocated at any event of the profile.
std::int64_t observed_peak(const StepProfile& profile) {
  std::int64_t peak = 0;
  for (std::size_t e = 0; e < profile.levels.size(); ++e)
    peak = std::max(peak, observed(profile, e));
  return peak;
}

// Where the hooks let go of a tensor saved for recompute: at the first event after its segment's
// forward returned (they hold it until then: Note [A segment's forward may read what it saved] in
// hooks/segment_frame.h), or at its pack where the profile does not say.
class ForwardEnds {
 public:
  explicit ForwardEnds(const StepProfile& profile) {
    for (const ProfiledSegment& s : profile.segments) {
      if (s.end_event >= 0) by_segment_[s.name].push_back(s.end_event);
    }
    for (auto& [name, ends] : by_segment_) std::sort(ends.begin(), ends.end());
  }
  // For a tensor of `segment` packed at `pack_event`: the end of the forward that saved it.
  std::int64_t released(const std::string& segment, std::int64_t pack_event) const {
    const auto it = by_segment_.find(segment);
    if (it == by_segment_.end()) return pack_event;
    const auto end = std::upper_bound(it->second.begin(), it->second.end(), pack_event);
    return end == it->second.end() ? pack_event : *end;
  }

 private:
  std::unordered_map<std::string, std::vector<std::int64_t>> by_segment_;
};

// When each segment's recomputed tensors came back in the profiled step: at its first unpack, or
// earlier, at its chain's rerun, where the step dropped the link after it.
std::unordered_map<std::string, std::int64_t> rerun_events(const StepProfile& profile) {
  std::unordered_map<std::string, std::int64_t> back;
  for (const ProfiledTensor& t : profile.tensors) {
    if (t.segment.empty() || t.unpack_event < 0) continue;
    const auto [it, added] = back.emplace(t.segment, t.unpack_event);
    if (!added) it->second = std::min(it->second, t.unpack_event);
  }
  for (auto s = profile.segments.rbegin(); s != profile.segments.rend(); ++s) {
    if (!s->dropped_link) continue;
    const auto consumer = back.find(s->name), producer = back.find(s->producer);
    if (consumer != back.end() && producer != back.end()) {
      producer->second = std::min(producer->second, consumer->second);
    }
  }
  return back;
}

// Keep's timeline: the profile's levels with what the profiled step sent out added back. A tensor
// evicted under pressure adds the bytes its eviction freed, from the eviction to its unpack; a
// storage sent out at pack that nothing else held adds its bytes from its first pack to its first
// unpack (keep would have held it that long; two saved tensors over one storage count it once),
// or, recomputed, from the end of its segment's forward (the hooks held it until then) to its
// segment's rerun if a chain brought it back earlier (the profile's levels hold it from then).
std::vector<std::int64_t> keep_levels(const StepProfile& profile) {
  const auto events = static_cast<std::int64_t>(profile.levels.size());
  std::vector<std::int64_t> delta(profile.levels.size() + 1, 0);
  struct Interval {
    std::int64_t bytes = 0, start = std::numeric_limits<std::int64_t>::max(),
                 end = std::numeric_limits<std::int64_t>::max();
  };
  std::unordered_map<std::uint64_t, Interval> sent_out;  // by storage
  const std::unordered_map<std::string, std::int64_t> reruns = rerun_events(profile);
  const ForwardEnds forward_ends(profile);
  for (const ProfiledTensor& t : profile.tensors) {
    std::int64_t start = t.pack_event;
    std::int64_t end = t.unpack_event >= 0 ? t.unpack_event : events;
    if (t.action == Action::kRecompute && !t.segment.empty()) {
      start = forward_ends.released(t.segment, t.pack_event);
      if (const auto rerun = reruns.find(t.segment); rerun != reruns.end()) {
        end = std::min(end, rerun->second);
      }
    }
    if (t.evicted_bytes > 0) {
      delta[std::max(t.pack_event, t.evicted_event)] += t.evicted_bytes;
      delta[end] -= t.evicted_bytes;
    }
    if (t.action != Action::kKeep && t.freeable && !t.is_leaf && t.storage != 0) {
      Interval& out = sent_out[t.storage];
      out.bytes = std::max(out.bytes, freed_bytes(t));
      out.start = std::min(out.start, start);
      out.end = std::min(out.end, end);
    }
  }
  for (const auto& [storage, out] : sent_out) {
    if (out.end <= out.start) continue;
    delta[out.start] += out.bytes;
    delta[out.end] -= out.bytes;
  }
  std::vector<std::int64_t> levels(profile.levels.size());
  std::int64_t extra = 0;
  for (std::size_t e = 0; e < levels.size(); ++e) {
    extra += delta[e];
    levels[e] = observed(profile, e) + extra;
  }
  return levels;
}

double copy_seconds(std::int64_t bytes, std::int64_t start, std::int64_t end,
                    const StepProfile& profile, const AutoOptions& options) {
  if (profile.copy_bytes_per_second <= 0) return std::numeric_limits<double>::infinity();
  double seconds = 2.0 * static_cast<double>(bytes) / profile.copy_bytes_per_second;
  if (options.copies_overlap && end > start &&
      end < static_cast<std::int64_t>(profile.event_ns.size())) {
    const double window =
        static_cast<double>(profile.event_ns[end] - profile.event_ns[start]) * 1e-9;
    seconds = std::max(0.0, seconds - window);
  }
  return seconds;
}

std::vector<Candidate> candidates(const StepProfile& profile, const AutoOptions& options) {
  const auto events = static_cast<std::int64_t>(profile.levels.size());
  // Which candidate groups hold each storage, and which storages are segment inputs.
  std::unordered_map<std::uint64_t, std::set<std::string>> holders;
  std::set<std::uint64_t> inputs;
  auto group_of = [](const ProfiledTensor& t) {
    return t.segment.empty() ? "#" + std::to_string(t.order) : t.segment;
  };
  for (const ProfiledTensor& t : profile.tensors) {
    if (t.is_leaf) continue;
    holders[t.storage].insert(group_of(t));
    if (t.segment_input) inputs.insert(t.storage);
  }
  // A link's storage is the next segment's input, which that segment holds for its rerun even
  // where none of its own tensors saved it: the producer's recompute does not free it (only
  // dropping the link does; link_candidates counts it there).
  for (const ProfiledSegment& s : profile.segments) {
    inputs.insert(s.link_storages.begin(), s.link_storages.end());
  }
  const ForwardEnds forward_ends(profile);
  std::map<std::string, Candidate> by_group;
  std::vector<std::string> order;  // groups in first-pack order
  std::map<std::string, std::set<std::uint64_t>> counted;
  for (const ProfiledTensor& t : profile.tensors) {
    if (t.is_leaf) continue;
    const std::string group = group_of(t);
    auto [it, added] = by_group.emplace(group, Candidate{});
    Candidate& c = it->second;
    if (added) {
      c.segment = t.segment;
      c.order = t.segment.empty() ? t.order : -1;
      c.start = t.pack_event;
      c.recompute_start =
          t.segment.empty() ? t.pack_event : forward_ends.released(t.segment, t.pack_event);
      c.end = events;
      order.push_back(group);
    }
    if (t.unpack_event >= 0) c.end = std::min(c.end, t.unpack_event);
    if (static_cast<std::size_t>(t.bytes) >= options.offload_min_bytes) c.host_bytes += t.bytes;
    // Only storages nothing else held, that this group alone saved, counted once.
    if (!(t.freeable || t.evicted) || holders[t.storage].size() != 1 ||
        !counted[group].insert(t.storage).second) {
      continue;
    }
    // A recomputed segment keeps its inputs for the rerun; an offloaded one lets them go.
    if (!inputs.count(t.storage)) c.recompute_bytes += freed_bytes(t);
    if (static_cast<std::size_t>(t.bytes) >= options.offload_min_bytes) {
      c.offload_bytes += freed_bytes(t);
    }
  }
  // A segment's forward as keep runs it: less the offloads the profiled step made inside it.
  std::map<std::string, std::int64_t> forward_ns;
  for (const ProfiledSegment& s : profile.segments) forward_ns[s.name] += s.forward_ns;
  for (const ProfiledTensor& t : profile.tensors) {
    if (!t.segment.empty()) forward_ns[t.segment] -= t.pack_copy_ns;
  }
  std::vector<Candidate> result;
  for (const std::string& group : order) {
    Candidate c = by_group[group];
    if (c.end <= c.start) continue;
    if (!c.segment.empty() && c.recompute_bytes > 0) {
      c.recompute_seconds =
          static_cast<double>(std::max<std::int64_t>(0, forward_ns[c.segment])) * 1e-9;
    }
    if (c.offload_bytes > 0 && options.can_offload()) {
      c.offload_seconds = copy_seconds(c.offload_bytes, c.start, c.end, profile, options);
    }
    if (c.recompute_seconds == std::numeric_limits<double>::infinity() &&
        c.offload_seconds == std::numeric_limits<double>::infinity()) {
      continue;
    }
    result.push_back(c);
  }
  return result;
}

std::vector<LinkCandidate> link_candidates(const StepProfile& profile,
                                           const std::vector<Candidate>& all) {
  std::unordered_map<std::string, std::size_t> index_of;  // segment candidates by name
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!all[i].segment.empty()) index_of.emplace(all[i].segment, i);
  }
  std::unordered_map<std::uint64_t, std::vector<const ProfiledTensor*>> over;  // by storage
  for (const ProfiledTensor& t : profile.tensors) {
    if (!t.is_leaf && t.storage != 0) over[t.storage].push_back(&t);
  }
  std::vector<LinkCandidate> links;
  for (const ProfiledSegment& s : profile.segments) {
    if (s.producer.empty()) continue;
    const auto consumer = index_of.find(s.name), producer = index_of.find(s.producer);
    if (consumer == index_of.end() || producer == index_of.end() ||
        producer->second >= consumer->second) {
      continue;
    }
    LinkCandidate link{consumer->second, producer->second, 0,
                       std::numeric_limits<std::int64_t>::max()};
    for (const std::uint64_t storage : s.link_storages) {
      const auto it = over.find(storage);
      if (it == over.end()) continue;  // saved by nobody: keep frees it too
      std::int64_t bytes = 0;
      bool freeable = false, shared = false;
      std::int64_t start = std::numeric_limits<std::int64_t>::max();
      for (const ProfiledTensor* t : it->second) {
        shared |= t->segment != s.name && t->segment != s.producer;
        freeable |= t->freeable || t->evicted;
        bytes = std::max(bytes, freed_bytes(*t));
        start = std::min(start, t->pack_event);
      }
      if (shared || !freeable) continue;
      link.bytes += bytes;
      link.start = std::min(link.start, start);
    }
    if (link.bytes > 0) links.push_back(link);
  }
  return links;
}

// When each candidate's tensors come back: its first unpack, or its chain's rerun when the plan
// dropped the link after it (each segment of a chain is back when the last one is first needed).
std::vector<std::int64_t> back_at(const std::vector<Candidate>& all,
                                  const std::vector<LinkCandidate>& links,
                                  const std::vector<char>& dropped) {
  std::vector<std::int64_t> back(all.size());
  std::vector<std::optional<std::size_t>> next(all.size());
  for (std::size_t i = 0; i < all.size(); ++i) back[i] = all[i].end;
  for (std::size_t l = 0; l < links.size(); ++l) {
    if (dropped[l]) next[links[l].producer] = links[l].consumer;
  }
  for (std::size_t i = all.size(); i-- > 0;) {
    if (next[i]) back[i] = std::min(back[i], back[*next[i]]);
  }
  return back;
}

std::int64_t freed_by(const Candidate& c, Action action) {
  switch (action) {
    case Action::kRecompute:
      return c.recompute_bytes;
    case Action::kOffload:
      return c.offload_bytes;
    case Action::kKeep:
      return 0;
  }
  return 0;
}

// The bytes offloaded candidates hold in the host pool at each event (from their first pack to
// their first unpack), against the pool's room.
class HostTimeline {
 public:
  HostTimeline(std::size_t events, std::optional<std::int64_t> room)
      : held_(events, 0), room_(room) {}

  bool fits(const Candidate& c) const {
    if (!room_) return true;
    const auto first = held_.begin() + c.start, last = held_.begin() + c.end;
    return *std::max_element(first, last) + c.host_bytes <= *room_;
  }
  void add(const Candidate& c) {
    for (std::int64_t e = c.start; e < c.end; ++e) held_[e] += c.host_bytes;
  }
  std::int64_t peak() const {
    return held_.empty() ? 0 : *std::max_element(held_.begin(), held_.end());
  }

 private:
  std::vector<std::int64_t> held_;
  std::optional<std::int64_t> room_;
};

// What the host pool can hold at once for a plan: its budget; no more than tuning says once
// planned steps saw it refuse; and, when the profiled step saw it refuse, no more than that step's
// offloads held at once (the most the pool provably took, its own overhead and whatever else it
// held included). None: no limit.
std::optional<std::int64_t> host_room(const StepProfile& profile, const AutoOptions& options,
                                      const PlanTuning& tuning) {
  std::optional<std::int64_t> room;
  if (options.host_capacity) room = static_cast<std::int64_t>(*options.host_capacity);
  if (tuning.host_room) room = std::min(room.value_or(*tuning.host_room), *tuning.host_room);
  if (profile.offload_refusals > 0 && !profile.levels.empty()) {
    std::vector<std::int64_t> delta(profile.levels.size() + 1, 0);
    for (const ProfiledTensor& t : profile.tensors) {
      if (t.action != Action::kOffload) continue;
      delta[t.pack_event] += t.bytes;
      delta[t.unpack_event >= 0 ? t.unpack_event : profile.levels.size()] -= t.bytes;
    }
    std::int64_t held = 0, most = 0;
    for (const std::int64_t d : delta) most = std::max(most, held += d);
    room = std::min(room.value_or(most), most);
  }
  return room;
}

// The choices a simulation runs: an action per candidate, and which links are dropped.
struct Choices {
  std::vector<Action> actions;
  std::vector<char> dropped;
};

// The timeline under `choices`: keep's, less each chosen candidate's bytes while out, and each
// dropped link's until its chain's rerun.
std::vector<std::int64_t> simulate(const std::vector<std::int64_t>& keep,
                                   const std::vector<Candidate>& all,
                                   const std::vector<LinkCandidate>& links,
                                   const Choices& choices) {
  std::vector<std::int64_t> delta(keep.size() + 1, 0);
  const std::vector<std::int64_t> back = back_at(all, links, choices.dropped);
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::int64_t bytes = freed_by(all[i], choices.actions[i]);
    delta[std::min(all[i].start_for(choices.actions[i]), back[i])] -= bytes;
    delta[choices.actions[i] == Action::kRecompute ? back[i] : all[i].end] += bytes;
  }
  for (std::size_t l = 0; l < links.size(); ++l) {
    if (!choices.dropped[l]) continue;
    delta[links[l].start] -= links[l].bytes;
    delta[back[links[l].consumer]] += links[l].bytes;
  }
  std::vector<std::int64_t> levels(keep.size());
  std::int64_t saved = 0;
  for (std::size_t e = 0; e < keep.size(); ++e) {
    saved += delta[e];
    levels[e] = keep[e] + saved;
  }
  return levels;
}

std::size_t peak_event(const std::vector<std::int64_t>& levels) {
  return static_cast<std::size_t>(std::max_element(levels.begin(), levels.end()) - levels.begin());
}

std::int64_t peak_of(const std::vector<std::int64_t>& levels) {
  return levels.empty() ? 0 : levels[peak_event(levels)];
}

// What the profiled step did with each candidate and link, when it sent anything out (it was
// profiled under a budget); none when it kept everything.
std::optional<Choices> profiled_choices(const StepProfile& profile,
                                        const std::vector<Candidate>& all,
                                        const std::vector<LinkCandidate>& links) {
  std::unordered_map<std::string, Action> by_group;  // a segment, or "#order" outside segments
  bool sent_out = false;
  for (const ProfiledTensor& t : profile.tensors) {
    if (t.is_leaf || t.action == Action::kKeep) continue;
    sent_out = true;
    by_group[t.segment.empty() ? "#" + std::to_string(t.order) : t.segment] = t.action;
  }
  if (!sent_out) return std::nullopt;
  std::unordered_map<std::string, bool> dropped_by;
  for (const ProfiledSegment& s : profile.segments) dropped_by[s.name] = s.dropped_link;
  Choices choices{std::vector<Action>(all.size(), Action::kKeep),
                  std::vector<char>(links.size(), 0)};
  for (std::size_t i = 0; i < all.size(); ++i) {
    const auto it =
        by_group.find(all[i].segment.empty() ? "#" + std::to_string(all[i].order) : all[i].segment);
    if (it != by_group.end()) choices.actions[i] = it->second;
  }
  for (std::size_t l = 0; l < links.size(); ++l) {
    choices.dropped[l] = dropped_by[all[links[l].consumer].segment] &&
                         choices.actions[links[l].consumer] == Action::kRecompute &&
                         choices.actions[links[l].producer] == Action::kRecompute;
  }
  return choices;
}

// Chooses, for each run of droppable links, the k (every k-th link kept) with the lowest simulated
// peak, the other runs as they are (Note [Auto plan]). Returns whether the peak fell.
bool choose_chains(const std::vector<std::int64_t>& keep, const std::vector<Candidate>& all,
                   const std::vector<LinkCandidate>& links, Choices& choices) {
  const auto droppable = [&](const LinkCandidate& link) {
    return choices.actions[link.consumer] == Action::kRecompute &&
           choices.actions[link.producer] == Action::kRecompute;
  };
  std::vector<std::vector<std::size_t>> runs;
  for (std::size_t l = 0; l < links.size(); ++l) {
    if (!droppable(links[l])) {
      choices.dropped[l] = 0;
      continue;
    }
    if (runs.empty() || links[runs.back().back()].consumer != links[l].producer)
      runs.emplace_back();
    runs.back().push_back(l);
  }
  const std::int64_t before = peak_of(simulate(keep, all, links, choices));
  std::int64_t best = before;
  for (const std::vector<std::size_t>& run : runs) {
    std::vector<char> best_pattern(run.size());
    for (std::size_t p = 0; p < run.size(); ++p) best_pattern[p] = choices.dropped[run[p]];
    for (std::size_t k = 1; k <= run.size() + 1; ++k) {
      for (std::size_t p = 0; p < run.size(); ++p) choices.dropped[run[p]] = (p + 1) % k != 0;
      const std::int64_t peak = peak_of(simulate(keep, all, links, choices));
      if (peak < best) {
        best = peak;
        for (std::size_t p = 0; p < run.size(); ++p) best_pattern[p] = choices.dropped[run[p]];
      }
    }
    for (std::size_t p = 0; p < run.size(); ++p) choices.dropped[run[p]] = best_pattern[p];
  }
  return best < before;
}

std::string mib(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

}  // namespace

std::string shape_signature(const std::string& first_segment, std::int64_t first_bytes,
                            std::int64_t second_bytes) {
  return first_segment + ":" + std::to_string(first_bytes) + ":" + std::to_string(second_bytes);
}

std::string StepProfile::signature() const {
  if (tensors.empty()) return "";
  return shape_signature(tensors.front().segment, tensors.front().bytes,
                         tensors.size() > 1 ? tensors[1].bytes : 0);
}

Action Plan::action_for(const std::string& segment, std::int64_t order) const {
  for (const PlanItem& item : items) {
    if (segment.empty() ? item.segment.empty() && item.order == order : item.segment == segment) {
      return item.action;
    }
  }
  return Action::kKeep;
}

std::string Plan::table() const {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %12s %10s %12s\n", "segment", "bytes", "action",
                "cost (ms)");
  out << line;
  for (const PlanItem& item : items) {
    const std::string name =
        item.segment.empty() ? "tensor #" + std::to_string(item.order) : item.segment;
    std::snprintf(line, sizeof line, "%-24s %12s %10s %12.2f\n", name.c_str(),
                  mib(item.bytes).c_str(), item.drops_input ? "chain" : to_string(item.action),
                  item.action == Action::kKeep ? 0.0 : item.cost_seconds * 1e3);
    out << line;
  }
  std::snprintf(line, sizeof line,
                "expected peak %s (keep %s, minimum %s, target %s), host %s of %s, added %.1f ms "
                "per step%s\n",
                mib(planned_peak_bytes).c_str(), mib(keep_peak_bytes).c_str(),
                mib(minimum_bytes).c_str(), mib(target_bytes).c_str(), mib(host_bytes).c_str(),
                host_room_bytes ? mib(*host_room_bytes).c_str() : "no limit", added_seconds * 1e3,
                as_profiled ? " (at the edge: as the profiled step did, which fitted)"
                : feasible  ? ""
                            : " (over the target: the pressure handler covers the rest)");
  out << line;
  return out.str();
}

Plan make_plan(const StepProfile& profile, std::int64_t budget, const AutoOptions& options,
               const PlanTuning& tuning) {
  std::vector<std::int64_t> keep = keep_levels(profile);
  for (std::int64_t& level : keep) level += tuning.base_shift;
  const std::vector<Candidate> all = candidates(profile, options);
  const std::vector<LinkCandidate> links = link_candidates(profile, all);
  Choices choices{std::vector<Action>(all.size(), Action::kKeep),
                  std::vector<char>(links.size(), 0)};
  Plan plan;
  plan.profiled_step_seconds = static_cast<double>(profile.step_ns) * 1e-9;
  plan.keep_peak_bytes = keep.empty() ? 0 : keep[peak_event(keep)];
  // What the allocator reserves above the most allocated; keep would reserve its peak plus that.
  const std::int64_t overhead =
      tuning.reserve_overhead.value_or(profile.reserved_peak_bytes - observed_peak(profile));
  const auto share = [budget](double fraction) {
    return static_cast<std::int64_t>(fraction * static_cast<double>(budget));
  };
  plan.overhead_bytes = overhead;
  // Keep fits when its peak and the overhead fit the budget less the margin evictions earned.
  const std::int64_t room = budget - overhead - share(tuning.extra_margin);
  plan.target_bytes =
      plan.keep_peak_bytes <= room ? plan.keep_peak_bytes : room - share(options.margin);
  plan.host_room_bytes = host_room(profile, options, tuning);
  {
    // Each candidate out the way that frees the most (offloaded while the host pool has room),
    // with the chains that lower that most.
    Choices most{std::vector<Action>(all.size()), std::vector<char>(links.size(), 0)};
    HostTimeline host(keep.size(), plan.host_room_bytes);
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto possible = [](double seconds) { return std::isfinite(seconds); };
      // (A recomputed segment whose tensors backward needs as its forward ends frees nothing.)
      const std::int64_t recompute =
          possible(all[i].recompute_seconds) && all[i].recompute_start < all[i].end
              ? all[i].recompute_bytes
              : 0;
      const std::int64_t offload =
          possible(all[i].offload_seconds) && host.fits(all[i]) ? all[i].offload_bytes : 0;
      most.actions[i] = recompute >= offload ? Action::kRecompute : Action::kOffload;
      if (most.actions[i] == Action::kOffload) host.add(all[i]);
    }
    choose_chains(keep, all, links, most);
    plan.minimum_bytes = peak_of(simulate(keep, all, links, most));
  }
  HostTimeline host(keep.size(), plan.host_room_bytes);
  std::vector<char> host_full(all.size(), 0);  // candidates the pool had no room for
  std::vector<std::int64_t> levels = keep;
  while (!levels.empty()) {
    const std::size_t at = peak_event(levels);
    if (levels[at] <= plan.target_bytes) break;
    std::optional<std::size_t> best;
    Action best_action = Action::kKeep;
    double best_price = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < all.size(); ++i) {
      const Candidate& c = all[i];
      if (choices.actions[i] != Action::kKeep || static_cast<std::int64_t>(at) >= c.end) continue;
      for (Action action : {Action::kRecompute, Action::kOffload}) {
        if (c.start_for(action) > static_cast<std::int64_t>(at)) continue;  // not out yet
        if (action == Action::kOffload && host_full[i]) continue;
        const std::int64_t bytes = freed_by(c, action);
        const double seconds =
            action == Action::kRecompute ? c.recompute_seconds : c.offload_seconds;
        if (bytes <= 0) continue;
        const double price = seconds / static_cast<double>(bytes);
        if (price < best_price) {
          best_price = price;
          best = i;
          best_action = action;
        }
      }
    }
    if (best && best_action == Action::kOffload && !host.fits(all[*best])) {
      host_full[*best] = 1;  // the same peak again, without that choice
      continue;
    }
    if (best) {
      if (best_action == Action::kOffload) host.add(all[*best]);
      choices.actions[*best] = best_action;
    } else if (!choose_chains(keep, all, links, choices)) {
      break;  // nothing left that is out at the peak, and no chain lowers it
    }
    levels = simulate(keep, all, links, choices);
  }
  plan.planned_peak_bytes = peak_of(levels);
  plan.feasible = plan.planned_peak_bytes <= plan.target_bytes;
  const bool at_the_edge =
      !plan.feasible || (!options.can_offload() && plan.planned_peak_bytes <= plan.minimum_bytes);
  if (at_the_edge) {
    // No plan reaches the target; or, without offload (so without the pressure handler's usual
    // way out), only the one that recomputes all it can. There the simulation is least sure (it
    // plans allocated bytes; the budget caps reserved ones), and the profiled step, which ran
    // under a budget and fitted, is known: its actions and chains are the plan.
    if (std::optional<Choices> profiled = profiled_choices(profile, all, links)) {
      choices = std::move(*profiled);
      plan.as_profiled = true;
      plan.planned_peak_bytes = peak_of(simulate(keep, all, links, choices));
    }
  }
  HostTimeline offloaded(keep.size(), std::nullopt);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (choices.actions[i] == Action::kOffload) offloaded.add(all[i]);
  }
  plan.host_bytes = offloaded.peak();
  std::vector<char> chained(all.size(), 0);
  for (std::size_t l = 0; l < links.size(); ++l) chained[links[l].consumer] |= choices.dropped[l];
  for (std::size_t i = 0; i < all.size(); ++i) {
    const Candidate& c = all[i];
    const Action action = choices.actions[i];
    double cost = action == Action::kRecompute ? c.recompute_seconds
                  : action == Action::kOffload ? c.offload_seconds
                                               : 0.0;
    if (!std::isfinite(cost)) cost = 0;  // (a profiled action the plan would not have priced)
    plan.items.push_back({c.segment, c.order, action, std::max(c.recompute_bytes, c.offload_bytes),
                          cost, chained[i] != 0});
    plan.added_seconds += cost;
  }
  return plan;
}

AutoPolicy::AutoPolicy(AutoOptions options) : options_(std::move(options)) {}

std::optional<std::size_t> AutoPolicy::current_budget() const {
  return options_.budget ? options_.budget() : std::nullopt;
}

Action AutoPolicy::profiling_action() const {
  // Under a budget, a step without a plan sends out what it can, since it must fit before it is
  // known (the hooks keep what is too small to offload; pressure can still evict it). Without
  // offload, or once the host pool has refused a tensor, it recomputes (the hooks keep what is
  // outside segments).
  if (!profiling_under_budget_) return Action::kKeep;
  return options_.can_offload() && !host_refused_ ? Action::kOffload : Action::kRecompute;
}

void AutoPolicy::offload_refused() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (in_step_) host_refused_ = true;
}

Action AutoPolicy::decide(const SavedTensorInfo& tensor) {
  std::lock_guard<std::mutex> lock(mutex_);
  spacing_.saw(tensor);
  if (tensor.order == 0) {
    in_step_ = true;
    diverged_ = false;
    host_refused_ = false;
    first_segment_ = tensor.segment;
    first_bytes_ = tensor.bytes;
    first_level_ = tensor.device_bytes;
    profiling_under_budget_ = current_budget().has_value();
    // The shape is known at the second pack; until then, the last step's, if it starts the same.
    current_ = last_ != nullptr && !last_->packs.empty() &&
                       last_->packs[0] == std::make_pair(tensor.segment, tensor.bytes)
                   ? last_
                   : nullptr;
    if (options_.plan_once && !shapes_.empty()) current_ = &shapes_.begin()->second;
  }
  if (tensor.order == 1 && !options_.plan_once) {
    auto it = shapes_.find(shape_signature(first_segment_, first_bytes_, tensor.bytes));
    Shape* const shape = it == shapes_.end() ? nullptr : &it->second;
    if (shape != current_ && current_ != nullptr) ambiguous_.emplace(first_segment_, first_bytes_);
    current_ = shape;
    if (current_ != nullptr && current_->plan) rebase(*current_);
  }
  if (current_ == nullptr || !current_->plan || diverged_) return profiling_action();
  const auto index = static_cast<std::size_t>(tensor.order);
  if (!options_.plan_once &&
      (index >= current_->packs.size() || current_->packs[index].first != tensor.segment ||
       current_->packs[index].second != tensor.bytes)) {
    diverged_ = true;  // not the profiled step after all: the rest is profiled
    return profiling_action();
  }
  if (tensor.segment.empty()) {
    const auto it = current_->tensor_actions.find(tensor.order);
    return it == current_->tensor_actions.end() ? Action::kKeep : it->second;
  }
  const auto it = current_->segment_actions.find(tensor.segment);
  return it == current_->segment_actions.end() ? Action::kKeep : it->second;
}

bool AutoPolicy::profiles_step() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (options_.plan_once) return true;
  if (in_step_) {
    // Its shape as known at its first pack (the last step's if it starts the same). A first pack
    // that began a shape other than the one it suggested is ambiguous: such steps are profiled.
    if (ambiguous_.count({first_segment_, first_bytes_}) > 0) return true;
    return current_ == nullptr || !current_->plan || diverged_;
  }
  return last_ == nullptr || !last_->plan;  // between steps: the next is likely the last one's
}

bool AutoPolicy::drops_input(const SegmentLink& link) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Asked in every step, so that the spacing learns each step's runs: a shape profiled after
  // planned steps chains as it would after a profiled one.
  const bool spacing_drops = spacing_.drops(link);
  if (current_ != nullptr && current_->plan && !diverged_) {
    return current_->chained.count(link.segment) > 0;
  }
  // A profiled step: chains only where it recomputes under a budget.
  return profiling_action() == Action::kRecompute && spacing_drops;
}

void AutoPolicy::end_step(const StepProfile& profile) {
  std::lock_guard<std::mutex> lock(mutex_);
  in_step_ = false;
  Shape* shape = current_;
  current_ = nullptr;
  last_ = shape;
  if (shape != nullptr && shape->plan && diverged_) {
    // Half of this step followed a plan made for another: its profile is not keep's. Profile
    // the next step of this shape afresh.
    shape->plan.reset();
    return;
  }
  if (shape != nullptr && shape->plan) {
    if (options_.log != LogLevel::kOff) {
      std::fprintf(stderr,
                   "actmem auto: planned peak %s (%s reserved with the overhead assumed), "
                   "reserved %s; step %.1f ms (profiled %.1f ms, +%.1f ms planned); %lld "
                   "evictions\n",
                   mib(shape->plan->planned_peak_bytes).c_str(),
                   mib(shape->plan->planned_peak_bytes + shape->plan->overhead_bytes).c_str(),
                   mib(profile.reserved_peak_bytes).c_str(),
                   static_cast<double>(profile.step_ns) * 1e-6,
                   shape->plan->profiled_step_seconds * 1e3, shape->plan->added_seconds * 1e3,
                   static_cast<long long>(profile.evictions));
    }
    if (options_.plan_once) return;
    PlanTuning& tuning = shape->tuning;
    const bool refused = profile.offload_refusals > 0 && shape->plan->host_bytes > 0;
    if (refused) {
      // The host pool took less than the plan offloaded at once (its own overhead, tensors of
      // other scopes): those tensors stayed on the device. Plan with less of the pool.
      tuning.host_room = shape->plan->host_bytes * 3 / 4;
    }
    if (profile.evictions > 0) {
      // The plan crossed the budget: plan this shape again, aiming lower.
      tuning.extra_margin = std::min(0.5, tuning.extra_margin + 0.05);
    }
    if (refused || profile.evictions > 0) {
      plan_shape(*shape);
      return;
    }
    // The allocator's overhead above the sampled peak depends on the pattern of allocations: the
    // profiled step's (everything sent out, segments cached from it) is not the plan's. A plan
    // that sent tensors out while its step left room under the budget plans again assuming half
    // that room less overhead: the target climbs towards the budget from below, the margin (raised
    // by any eviction) stops it, and a few updates per shape keep the two from chasing each other.
    // Without offload there is no climbing: the evictions that stop it are offloads, and a step
    // that overshoots with nothing to offload runs out of memory instead.
    const std::optional<std::size_t> budget = current_budget();
    const bool sent_out = std::any_of(shape->plan->items.begin(), shape->plan->items.end(),
                                      [](const PlanItem& i) { return i.action != Action::kKeep; });
    constexpr int kOverheadUpdates = 8;
    if (budget.has_value() && sent_out && options_.can_offload() &&
        tuning.overhead_updates < kOverheadUpdates) {
      const auto limit = static_cast<std::int64_t>(budget.value());
      const std::int64_t room = limit - profile.reserved_peak_bytes;
      if (room > limit / 100) {
        tuning.reserve_overhead = std::max<std::int64_t>(0, shape->plan->overhead_bytes - room / 2);
        ++tuning.overhead_updates;
        plan_shape(*shape);
      }
    }
    return;
  }
  // A profiled step; a summary (a step that turned out to be of another shape) teaches nothing.
  if (!profile.detailed) return;
  Shape& profiled = shapes_[profile.signature()];
  last_ = &profiled;
  profiled.profile = profile;
  profiled.tuning = PlanTuning{};  // what earlier steps taught was relative to another profile
  profiled.packs.clear();
  for (const ProfiledTensor& t : profile.tensors) profiled.packs.emplace_back(t.segment, t.bytes);
  plan_shape(profiled);
}

void AutoPolicy::rebase(Shape& shape) {
  if (shape.profile.levels.empty()) return;
  const std::int64_t shift = first_level_ - shape.profile.levels.front();
  const std::optional<std::size_t> budget = current_budget();
  // Only upwards, and by more than 1 % of the budget: steps that start lower (gradient
  // accumulation alternates) fit the plan made for the higher start, and small moves are noise.
  if (!budget.has_value() ||
      shift - shape.tuning.base_shift <= static_cast<std::int64_t>(budget.value() / 100)) {
    return;
  }
  if (options_.log != LogLevel::kOff) {
    std::fprintf(stderr,
                 "actmem auto: this step starts with %s more allocated than the profiled one: "
                 "planning again\n",
                 mib(shift).c_str());
  }
  shape.tuning.base_shift = shift;
  plan_shape(shape);
}

void AutoPolicy::plan_shape(Shape& shape) {
  const std::optional<std::size_t> budget = current_budget();
  // Without a budget nothing needs to go out: a plan under an unreachable target keeps all.
  const std::int64_t limit =
      budget ? static_cast<std::int64_t>(*budget) : std::numeric_limits<std::int64_t>::max() / 2;
  const auto start = std::chrono::steady_clock::now();
  Plan plan = make_plan(shape.profile, limit, options_, shape.tuning);
  const double planning_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  ++plans_made_;
  if (options_.log != LogLevel::kOff) {
    std::fprintf(stderr,
                 "actmem auto: plan for shape %s under a budget of %s (planned in %.2f ms, "
                 "%.2f %% of the profiled step):\n%s",
                 shape.profile.signature().c_str(), budget ? mib(limit).c_str() : "none",
                 planning_ms,
                 100.0 * planning_ms / std::max(1e-9, plan.profiled_step_seconds * 1e3),
                 plan.table().c_str());
  }
  shape.segment_actions.clear();
  shape.tensor_actions.clear();
  shape.chained.clear();
  for (const PlanItem& item : plan.items) {
    if (item.drops_input) shape.chained.insert(item.segment);
    if (item.action == Action::kKeep) continue;
    if (item.segment.empty()) {
      shape.tensor_actions[item.order] = item.action;
    } else {
      shape.segment_actions[item.segment] = item.action;
    }
  }
  shape.plan = std::move(plan);
}

int AutoPolicy::plans_made() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return plans_made_;
}

}  // namespace actmem
