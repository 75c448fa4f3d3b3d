// NCCL collectives for tensor parallelism across a host's GPUs, through libnccl.so.2 opened at
// run time (dlopen): the module links no NCCL and includes no NCCL or CUDA header, so one build
// serves hosts with and without it. The few entry points used are declared here with NCCL's
// stable C ABI (ncclUniqueId is 128 bytes; ncclComm_t and cudaStream_t are opaque pointers).
//
// Every call but open_library() needs the library open; device pointers and the stream come from
// the caller (torch's current stream), and the caller's current CUDA device is the rank's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace helexa::nccl {

constexpr int kUniqueIdBytes = 128;

// Opens the first of `candidates` that dlopen accepts and that exports NCCL's entry points;
// returns its path. Throws std::runtime_error naming every candidate and why it was passed over.
std::string open_library(const std::vector<std::string>& candidates);
bool library_open();
int version();  // ncclGetVersion: e.g. 22703 for 2.27.3

std::vector<uint8_t> unique_id();  // ncclGetUniqueId: rank 0 makes it, every rank gets a copy
uintptr_t comm_init(const std::vector<uint8_t>& id, int world, int rank);  // blocks until all ranks join
void comm_destroy(uintptr_t comm);

// In place, summed over the ranks: `count` elements of `dtype` at `buf`.
void all_reduce(uintptr_t comm, uintptr_t buf, int64_t count, DType dtype, uintptr_t stream);
void broadcast(uintptr_t comm, uintptr_t buf, int64_t count, DType dtype, int root, uintptr_t stream);
// `count` elements from each rank, rank order, into `recv` (world * count elements).
void all_gather(uintptr_t comm, uintptr_t send, uintptr_t recv, int64_t count, DType dtype, uintptr_t stream);

}  // namespace helexa::nccl
