//===- Offload.cpp - Saved activations in pinned host memory --------------===//
//
// See moert/kernels/Offload.h.
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/Offload.h"

#include <algorithm>

using namespace moert::kernels;

namespace {

/// The (timed) events of offload `id`, created on first use.
std::array<cudaEvent_t, 4> &offloadEventsOf(ActivationOffload &o, int id) {
  while (static_cast<int>(o.offloadEvents.size()) <= id) {
    std::array<cudaEvent_t, 4> events;
    for (cudaEvent_t &e : events)
      MOERT_CUDA_CHECK(cudaEventCreate(&e));
    o.offloadEvents.push_back(events);
    o.offloadRan.push_back(0);
    o.offloadJoined.push_back(0);
  }
  return o.offloadEvents[id];
}

/// The (timed) events of fetch `id`, created on first use.
std::array<cudaEvent_t, 4> &fetchEventsOf(ActivationOffload &o, int id) {
  while (static_cast<int>(o.fetchEvents.size()) <= id) {
    std::array<cudaEvent_t, 4> events;
    for (cudaEvent_t &e : events)
      MOERT_CUDA_CHECK(cudaEventCreate(&e));
    o.fetchEvents.push_back(events);
    o.fetchBytes.push_back(0);
  }
  return o.fetchEvents[id];
}

} // namespace

ActivationOffload *moert::kernels::createActivationOffload(int64_t hostBytes) {
  auto *o = new ActivationOffload;
  MOERT_CUDA_CHECK(
      cudaStreamCreateWithFlags(&o->offloadStream, cudaStreamNonBlocking));
  MOERT_CUDA_CHECK(
      cudaStreamCreateWithFlags(&o->fetchStream, cudaStreamNonBlocking));
  o->hostBytes = hostBytes;
  MOERT_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void **>(&o->host),
                                 std::max<int64_t>(hostBytes, 1),
                                 cudaHostAllocDefault));
  return o;
}

void moert::kernels::destroyActivationOffload(ActivationOffload *o) {
  for (auto &events : o->offloadEvents)
    for (cudaEvent_t e : events)
      MOERT_CUDA_CHECK(cudaEventDestroy(e));
  for (auto &events : o->fetchEvents)
    for (cudaEvent_t e : events)
      MOERT_CUDA_CHECK(cudaEventDestroy(e));
  MOERT_CUDA_CHECK(cudaFreeHost(o->host));
  MOERT_CUDA_CHECK(cudaStreamDestroy(o->offloadStream));
  MOERT_CUDA_CHECK(cudaStreamDestroy(o->fetchStream));
  delete o;
}

OffloadStepTimes moert::kernels::readOffloadTimes(ActivationOffload &o) {
  OffloadStepTimes times;
  times.offloadedBytes = o.offloadedBytes;
  o.offloadedBytes = 0;
  for (size_t id = 0; id < o.fetchEvents.size(); ++id) {
    if (o.fetchBytes[id] == 0)
      continue;
    const std::array<cudaEvent_t, 4> &e = o.fetchEvents[id];
    float copy = 0, wait = 0;
    MOERT_CUDA_CHECK(cudaEventElapsedTime(&copy, e[1], e[2]));
    MOERT_CUDA_CHECK(cudaEventElapsedTime(&wait, e[3], e[2]));
    times.fetchedBytes += o.fetchBytes[id];
    times.fetchMilliseconds += copy;
    times.waitMilliseconds += std::max(0.0f, wait);
    o.fetchBytes[id] = 0;
  }
  for (size_t id = 0; id < o.offloadEvents.size(); ++id) {
    if (!o.offloadRan[id])
      continue;
    const std::array<cudaEvent_t, 4> &e = o.offloadEvents[id];
    float copy = 0;
    MOERT_CUDA_CHECK(cudaEventElapsedTime(&copy, e[1], e[2]));
    times.offloadMilliseconds += copy;
    if (o.offloadJoined[id]) {
      float wait = 0;
      MOERT_CUDA_CHECK(cudaEventElapsedTime(&wait, e[3], e[2]));
      times.joinWaitMilliseconds += std::max(0.0f, wait);
    }
    o.offloadRan[id] = o.offloadJoined[id] = 0;
  }
  return times;
}

void moert::kernels::offloadToHost(const Context &ctx, int id,
                                   const void *device, int64_t hostOffset,
                                   int64_t bytes) {
  ActivationOffload &o = *ctx.offload;
  std::array<cudaEvent_t, 4> &e = offloadEventsOf(o, id);
  MOERT_CUDA_CHECK(cudaEventRecord(e[0], ctx.stream));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(o.offloadStream, e[0], 0));
  MOERT_CUDA_CHECK(cudaEventRecord(e[1], o.offloadStream));
  MOERT_CUDA_CHECK(cudaMemcpyAsync(o.host + hostOffset, device, bytes,
                                   cudaMemcpyDeviceToHost, o.offloadStream));
  MOERT_CUDA_CHECK(cudaEventRecord(e[2], o.offloadStream));
  o.offloadRan[id] = 1;
  o.offloadedBytes += bytes;
}

void moert::kernels::joinOffload(const Context &ctx, int id) {
  ActivationOffload &o = *ctx.offload;
  std::array<cudaEvent_t, 4> &e = offloadEventsOf(o, id);
  MOERT_CUDA_CHECK(cudaEventRecord(e[3], ctx.stream));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, e[2], 0));
  o.offloadJoined[id] = 1;
}

void moert::kernels::fetchAfterOffload(const Context &ctx, int id) {
  ActivationOffload &o = *ctx.offload;
  MOERT_CUDA_CHECK(
      cudaStreamWaitEvent(o.fetchStream, offloadEventsOf(o, id)[2], 0));
}

void moert::kernels::fetchFromHost(const Context &ctx, int id, int offloadId,
                                   void *device, int64_t hostOffset,
                                   int64_t bytes) {
  ActivationOffload &o = *ctx.offload;
  std::array<cudaEvent_t, 4> &e = fetchEventsOf(o, id);
  MOERT_CUDA_CHECK(cudaEventRecord(e[0], ctx.stream));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(o.fetchStream, e[0], 0));
  fetchAfterOffload(ctx, offloadId);
  MOERT_CUDA_CHECK(cudaEventRecord(e[1], o.fetchStream));
  MOERT_CUDA_CHECK(cudaMemcpyAsync(device, o.host + hostOffset, bytes,
                                   cudaMemcpyHostToDevice, o.fetchStream));
  MOERT_CUDA_CHECK(cudaEventRecord(e[2], o.fetchStream));
  o.fetchBytes[id] = bytes;
}

void moert::kernels::joinFetch(const Context &ctx, int id) {
  std::array<cudaEvent_t, 4> &e = fetchEventsOf(*ctx.offload, id);
  MOERT_CUDA_CHECK(cudaEventRecord(e[3], ctx.stream));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, e[2], 0));
}
