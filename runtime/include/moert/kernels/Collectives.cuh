//===- Collectives.cuh - The shard dialect's collectives on a mesh group -*- CUDA -*-===//
//
// What a partitioned step's static collectives (docs/partitioning.md, Hybrid
// sharding) lower to: shard.all_gather, shard.reduce_scatter and
// shard.all_reduce on the group of the grid axes they name, through the
// rank's moert::Communicator of that group (Context::mesh), on ctx.stream,
// and the fill of a tensor from a device scalar (linalg.broadcast of the
// loss weight).
//
// Communicator::allGather concatenates along the leading dimension and
// reduceScatterSum splits along it. A tensor gathered or scattered along
// dimension a > 0 is seen as [outer, extent, inner] (outer the product of
// the dimensions before a): the gather lands in scratch as [G, outer,
// extent·inner] and a copy kernel interleaves it into [outer, G·extent,
// inner]; the scatter copies [outer, G·extent, inner] into scratch as
// [G, outer, extent·inner] first. Along the leading dimension (outer = 1)
// both call the communicator on the buffers directly. The padding of a
// chunked parameter (docs/partitioning.md, Layout) is cut off after the
// gather (extractSlice) and added to a gradient before the scatter
// (insertSlice into a zero fill).
//
// Every call checks that the group has the size the IR was partitioned for
// and exits with the op, the group and the sizes otherwise; a failed
// collective exits with the communicator's message.
//
// Scratch: collectiveScratchBytes (the interleaved copy, when outer > 1).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_COLLECTIVES_CUH
#define MOERT_KERNELS_COLLECTIVES_CUH

#include "moert/Mesh.h"
#include "moert/kernels/Common.cuh"

#include <array>
#include <type_traits>
#include <vector>

namespace moert::kernels {

/// The Communicator element type of T.
template <class T> constexpr DataType dataTypeOf() {
  if constexpr (std::is_same_v<T, float>)
    return DataType::F32;
  else if constexpr (std::is_same_v<T, bf16>)
    return DataType::BF16;
  else if constexpr (std::is_same_v<T, int32_t>)
    return DataType::I32;
  else {
    static_assert(std::is_same_v<T, int64_t>, "no collective element type");
    return DataType::I64;
  }
}

/// The rank's communicator over `axes`, checked to have `size` ranks; `op`
/// names the caller in messages.
inline Communicator &meshGroup(const Context &ctx, MeshAxes axes,
                               int64_t size, const char *op) {
  if (ctx.mesh == nullptr) {
    std::fprintf(stderr, "moert: %s: the step is partitioned but the "
                         "context has no mesh\n",
                 op);
    std::exit(1);
  }
  Communicator &group = ctx.mesh->group(axes);
  if (group.size() != size) {
    std::fprintf(stderr, "moert: %s: group %s has %d ranks, the step was "
                         "partitioned for %lld\n",
                 op, group.group().c_str(), group.size(),
                 static_cast<long long>(size));
    std::exit(1);
  }
  return group;
}

/// Exits with the communicator's message when `status` failed.
inline void checkCollective(const Status &status, const char *op) {
  if (!status.ok()) {
    std::fprintf(stderr, "moert: %s: %s\n", op, status.message().c_str());
    std::exit(1);
  }
}

namespace detail {

/// out[o, g, i] = in[g, o, i] for g < G, o < outer, i < inner (`toBlocks`
/// false); the reverse copy when true.
template <class T>
__global__ void collectiveInterleaveKernel(const T *in, T *out, int64_t G,
                                           int64_t outer, int64_t inner,
                                           bool toBlocks) {
  int64_t n = G * outer * inner;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < n;
       x += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = x % inner, rest = x / inner;
    int64_t o = rest % outer, g = rest / outer; // x = [g, o, i]
    int64_t y = (o * G + g) * inner + i;        // [o, g, i]
    if (toBlocks)
      out[x] = in[y];
    else
      out[y] = in[x];
  }
}

template <class T> __global__ void fillKernel(const T *value, int64_t n, T *out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = *value;
}

} // namespace detail

/// shard.all_gather: `send` is [outer, inner] (inner = the gather
/// dimension's local extent times the rest), `recv` [outer, G·inner].
template <class T>
void allGather(const Context &ctx, MeshAxes axes, int64_t G, const T *send,
               T *recv, int64_t outer, int64_t inner) {
  Communicator &group = meshGroup(ctx, axes, G, "shard.all_gather");
  int64_t local = outer * inner;
  if (outer == 1) {
    checkCollective(group.allGather(send, recv, local, dataTypeOf<T>(),
                                    ctx.stream),
                    "shard.all_gather");
    return;
  }
  int64_t offset = 0;
  T *blocks = scratchAt<T>(ctx, offset, G * local);
  checkCollective(
      group.allGather(send, blocks, local, dataTypeOf<T>(), ctx.stream),
      "shard.all_gather");
  detail::collectiveInterleaveKernel<T>
      <<<blocksFor(G * local), 256, 0, ctx.stream>>>(blocks, recv, G, outer,
                                                     inner, false);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// shard.reduce_scatter (sum): `send` is [outer, G·inner], `recv` the
/// rank's [outer, inner] of the sum over the group.
template <class T>
void reduceScatter(const Context &ctx, MeshAxes axes, int64_t G,
                   const T *send, T *recv, int64_t outer, int64_t inner) {
  Communicator &group = meshGroup(ctx, axes, G, "shard.reduce_scatter");
  int64_t local = outer * inner;
  const T *blocks = send;
  if (outer > 1) {
    int64_t offset = 0;
    T *copy = scratchAt<T>(ctx, offset, G * local);
    detail::collectiveInterleaveKernel<T>
        <<<blocksFor(G * local), 256, 0, ctx.stream>>>(send, copy, G, outer,
                                                       inner, true);
    MOERT_CUDA_CHECK(cudaGetLastError());
    blocks = copy;
  }
  checkCollective(group.reduceScatterSum(blocks, recv, local,
                                         dataTypeOf<T>(), ctx.stream),
                  "shard.reduce_scatter");
}

/// shard.all_reduce (sum) of `count` elements; in place when send == recv.
template <class T>
void allReduceSum(const Context &ctx, MeshAxes axes, int64_t G, const T *send,
                  T *recv, int64_t count) {
  Communicator &group = meshGroup(ctx, axes, G, "shard.all_reduce");
  checkCollective(
      group.allReduceSum(send, recv, count, dataTypeOf<T>(), ctx.stream),
      "shard.all_reduce");
}

/// Overlap. The compiler chooses where each collective runs and where the
/// compute stream waits for it (dialects/Moe/Transforms/CollectiveSchedule.h):
/// the printed step forks it off the compute stream at its place in the
/// program (so it sees every earlier write) onto Context::collectiveStream,
/// or Context::gradientStream for a gradient reduction, and joins it back
/// right after it or before a later op. Every fork and join is in the
/// printed step; `id` numbers the collective.

/// This rank's two events of overlapped collective `id`: [0] the fork on
/// the compute stream, [1] the collective's end.
inline cudaEvent_t *collectiveEvents(int id) {
  thread_local std::vector<std::array<cudaEvent_t, 2>> events;
  while (static_cast<int>(events.size()) <= id) {
    std::array<cudaEvent_t, 2> pair;
    for (cudaEvent_t &e : pair)
      MOERT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events.push_back(pair);
  }
  return events[id].data();
}

namespace detail {

/// ctx on `stream` with `scratch`, once `stream` has waited for the compute
/// stream's work so far (event [0] of collective `id`); ctx itself when
/// the rank has no collective streams.
inline Context fork(const Context &ctx, int id, cudaStream_t stream,
                    char *scratch, int64_t scratchBytes) {
  Context forked = ctx;
  if (!stream)
    return forked;
  cudaEvent_t *events = collectiveEvents(id);
  MOERT_CUDA_CHECK(cudaEventRecord(events[0], ctx.stream));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(stream, events[0], 0));
  forked.stream = stream;
  if (scratch) {
    forked.scratch = scratch;
    forked.scratchBytes = scratchBytes;
  }
  return forked;
}

} // namespace detail

/// The context collective `id` runs in: ctx with the collective stream,
/// which first waits for the compute stream's work so far.
inline Context forkCollective(const Context &ctx, int id) {
  return detail::fork(ctx, id, ctx.collectiveStream, ctx.collectiveScratch,
                      ctx.collectiveScratchBytes);
}

/// The context gradient reduction `id` runs in: ctx with the gradient
/// stream, which first waits for the compute stream's work so far.
inline Context forkGradientReduction(const Context &ctx, int id) {
  return detail::fork(ctx, id, ctx.gradientStream, ctx.gradientScratch,
                      ctx.gradientScratchBytes);
}

/// Marks the end of collective `id` on the stream it ran on (`forked`, the
/// context its fork returned).
inline void endCollective(const Context &forked, int id) {
  if (forked.collectiveStream)
    MOERT_CUDA_CHECK(cudaEventRecord(collectiveEvents(id)[1], forked.stream));
}

/// The compute stream waits for collective `id` to end. A join inside a
/// captured segment (moert/StepGraphs.h) waits on an event recorded outside
/// the capture, between the segments' replays: it is captured as an
/// external event wait, which waits for the record made before the replay.
/// A profiled step marks the wait ("collective.wait"): the gap to the next
/// op's mark is the time the compute stream waited for the collective.
inline void joinCollective(const Context &ctx, int id) {
  if (!ctx.collectiveStream)
    return;
  mark(ctx, "collective.wait");
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOERT_CUDA_CHECK(cudaStreamIsCapturing(ctx.stream, &capture));
  MOERT_CUDA_CHECK(cudaStreamWaitEvent(
      ctx.stream, collectiveEvents(id)[1],
      capture == cudaStreamCaptureStatusActive ? cudaEventWaitExternal
                                               : cudaEventWaitDefault));
}

/// A static slice of a tensor (tensor.extract_slice / insert_slice with unit
/// strides): its shape, the whole tensor's and its offsets.
template <int Rank> struct Slice {
  int64_t shape[Rank];
  int64_t whole[Rank];
  int64_t offset[Rank];
};

namespace detail {

/// Element i of the slice <-> its index in the whole tensor; copies slice
/// element i from `whole` (extract) or into it (insert).
template <class T, int Rank>
__global__ void sliceCopyKernel(const T *in, T *out, Slice<Rank> slice,
                                int64_t count, bool insert) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, flat = 0, stride = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      flat += (slice.offset[d] + rest % slice.shape[d]) * stride;
      rest /= slice.shape[d];
      stride *= slice.whole[d];
    }
    if (insert)
      out[flat] = in[i];
    else
      out[i] = in[flat];
  }
}

template <class T>
__global__ void fillValueKernel(T value, int64_t n, T *out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = value;
}

} // namespace detail

/// tensor.extract_slice: out (the slice) from `whole`. The all-gather of a
/// chunked parameter drops its padding this way.
template <class T, int Rank>
void extractSlice(const Context &ctx, const T *whole, const Slice<Rank> &slice,
                  T *out) {
  int64_t count = 1;
  for (int d = 0; d < Rank; ++d)
    count *= slice.shape[d];
  if (count == 0)
    return;
  detail::sliceCopyKernel<T, Rank>
      <<<blocksFor(count), 256, 0, ctx.stream>>>(whole, out, slice, count,
                                                 false);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// tensor.insert_slice: `part` into the slice of `whole` (already holding
/// the destination's values). A gradient gets its zero padding this way.
template <class T, int Rank>
void insertSlice(const Context &ctx, const T *part, const Slice<Rank> &slice,
                 T *whole) {
  int64_t count = 1;
  for (int d = 0; d < Rank; ++d)
    count *= slice.shape[d];
  if (count == 0)
    return;
  detail::sliceCopyKernel<T, Rank>
      <<<blocksFor(count), 256, 0, ctx.stream>>>(part, whole, slice, count,
                                                 true);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// out[i] = value, i < n (a splat destination of tensor.insert_slice).
template <class T>
void fillValue(const Context &ctx, float value, int64_t n, T *out) {
  if (n == 0)
    return;
  detail::fillValueKernel<T>
      <<<blocksFor(n), 256, 0, ctx.stream>>>(fromFloat<T>(value), n, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

/// linalg.broadcast of a device scalar: out[i] = *value, i < n.
template <class T>
void fill(const Context &ctx, const T *value, int64_t n, T *out) {
  if (n == 0)
    return;
  detail::fillKernel<T><<<blocksFor(n), 256, 0, ctx.stream>>>(value, n, out);
  MOERT_CUDA_CHECK(cudaGetLastError());
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_COLLECTIVES_CUH
