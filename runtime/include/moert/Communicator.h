//===- Communicator.h - Collectives of a group of ranks ---------*- C++ -*-===//
//
// The collectives a partitioned program runs, on device buffers and a CUDA
// stream, between the ranks of one group (the world, or a mesh group made
// by split: expert, shard, replica, the dense all-reduce group). Every
// collective has the same shape: device buffers, element counts, the
// element type, the stream; it is enqueued on the stream and returns a
// Status at once (a failure names the file:line, the rank, the group and
// the collective). Counts are in elements; offsets of all_to_all are in
// elements from the buffer's start.
//
// NcclCommunicator (moert/NcclCommunicator.h) is the implementation; the
// interface leaves room for others (an in-process one for tests that run
// several ranks as threads on one GPU). A one-GPU program makes none.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_COMMUNICATOR_H
#define MOERT_COMMUNICATOR_H

#include "moert/Status.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// Element types of the buffers a collective moves.
enum class DataType { F32, BF16, I32, I64 };

/// Bytes of one element of `type`.
size_t elementBytes(DataType type);

/// "f32", "bf16", "i32" or "i64".
const char *dataTypeName(DataType type);

/// The argument checks every implementation makes the same way, before it
/// moves anything: each returns why the arguments are wrong for a group of
/// `groupSize` ranks (the implementation prefixes its file:line, rank, group
/// and collective), or an empty string when they are right.
///
/// allToAllV: one count and one offset per rank of the group, both ways.
std::string checkAllToAllCounts(int groupSize,
                                const std::vector<size_t> &sendCounts,
                                const std::vector<size_t> &sendOffsets,
                                const std::vector<size_t> &recvCounts,
                                const std::vector<size_t> &recvOffsets);
/// broadcast: the root is a rank of the group.
std::string checkBroadcastRoot(int groupSize, int root);

/// One group of ranks and the collectives between them.
class Communicator {
public:
  virtual ~Communicator();

  /// This rank's index in the group, and the group's size.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// The group's name in messages ("world", "expert", ...).
  virtual const std::string &group() const = 0;

  /// recv[i] = sum over ranks of send[i], i < count. In place when
  /// send == recv.
  virtual Status allReduceSum(const void *send, void *recv, size_t count,
                              DataType type, cudaStream_t stream) = 0;

  /// recv[r·count + i] = send of rank r [i]: recv holds size()·count.
  virtual Status allGather(const void *send, void *recv, size_t count,
                           DataType type, cudaStream_t stream) = 0;

  /// recv[i] = sum over ranks of their send[rank()·count + i]: send holds
  /// size()·count, recv count.
  virtual Status reduceScatterSum(const void *send, void *recv, size_t count,
                                  DataType type, cudaStream_t stream) = 0;

  /// Every rank sends sendCounts[r] elements from send + sendOffsets[r] to
  /// rank r and receives recvCounts[r] elements from rank r at recv +
  /// recvOffsets[r]. The four vectors hold size() entries, on the host
  /// (the counts are known before the call); a rank's sendCounts[r] must
  /// equal rank r's recvCounts[rank()].
  virtual Status allToAllV(const void *send,
                           const std::vector<size_t> &sendCounts,
                           const std::vector<size_t> &sendOffsets, void *recv,
                           const std::vector<size_t> &recvCounts,
                           const std::vector<size_t> &recvOffsets,
                           DataType type, cudaStream_t stream) = 0;

  /// recv[i] = send of rank `root` [i] (send is read on the root only).
  virtual Status broadcast(const void *send, void *recv, size_t count,
                           DataType type, int root, cudaStream_t stream) = 0;

  /// Returns once every rank of the group has reached it and the work
  /// enqueued on `stream` before it has finished.
  virtual Status barrier(cudaStream_t stream) = 0;

  /// The group of the ranks that pass the same `color`, ordered by `key`
  /// (then by rank), named `group`; a negative color takes no part and
  /// gets null. Every rank of this group calls it.
  virtual Status split(int color, int key, const std::string &group,
                       std::unique_ptr<Communicator> &out) = 0;

  /// Ends the group's pending collectives on this rank without waiting for
  /// the others (a watchdog's way out of a hang); every later call fails.
  virtual void abort() = 0;

  /// Watches the work enqueued on `stream` so far as `what` (a CUDA graph's
  /// launch, whose collectives were captured, not watched one by one): a
  /// communicator with a watchdog reports it like a collective that does
  /// not finish. The others ignore it.
  virtual Status watchStream(const std::string &what, cudaStream_t stream) {
    (void)what;
    (void)stream;
    return Status::success();
  }
};

} // namespace moert

#endif // MOERT_COMMUNICATOR_H
