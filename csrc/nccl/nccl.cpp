// See nccl.h. The library handle and the entry points are process-wide; opening twice is a no-op.
#include "nccl/nccl.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <stdexcept>

namespace helexa::nccl {
namespace {

using Result = int;  // ncclResult_t: 0 is ncclSuccess
struct UniqueId {
  char internal[kUniqueIdBytes];
};
using Comm = void*;
using Stream = void*;
enum DataType : int { kFloat16 = 6, kFloat32 = 7, kBfloat16 = 9 };  // ncclDataType_t
constexpr int kSum = 0;                                            // ncclRedOp_t

struct Api {
  void* handle = nullptr;
  std::string path;
  Result (*get_version)(int*) = nullptr;
  Result (*get_unique_id)(UniqueId*) = nullptr;
  Result (*comm_init_rank)(Comm*, int, UniqueId, int) = nullptr;
  Result (*comm_destroy)(Comm) = nullptr;
  Result (*all_reduce)(const void*, void*, size_t, int, int, Comm, Stream) = nullptr;
  Result (*broadcast)(const void*, void*, size_t, int, int, Comm, Stream) = nullptr;
  Result (*all_gather)(const void*, void*, size_t, int, Comm, Stream) = nullptr;
  const char* (*error_string)(Result) = nullptr;
};

Api& api() {
  static Api a;
  return a;
}
std::mutex& api_mutex() {
  static std::mutex m;
  return m;
}

template <class F>
bool bind(void* handle, const char* name, F& out) {
  out = reinterpret_cast<F>(dlsym(handle, name));
  return out != nullptr;
}

const Api& opened() {
  const Api& a = api();
  if (a.handle == nullptr) throw std::runtime_error("NCCL is not loaded: call neuron.ops.nccl.load() first");
  return a;
}

void check(Result r, const char* what) {
  if (r != 0) {
    const Api& a = api();
    std::string msg = std::string(what) + " failed: NCCL error " + std::to_string(r);
    if (a.error_string != nullptr) msg += std::string(" (") + a.error_string(r) + ")";
    throw std::runtime_error(msg);
  }
}

int nccl_type(DType t) {
  switch (t) {
    case DType::f32: return kFloat32;
    case DType::f16: return kFloat16;
    case DType::bf16: return kBfloat16;
  }
  throw std::invalid_argument("NCCL collectives take float32, float16 or bfloat16");
}

}  // namespace

std::string open_library(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(api_mutex());
  Api& a = api();
  if (a.handle != nullptr) return a.path;
  std::string tried;
  for (const std::string& path : candidates) {
    dlerror();
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* why = dlerror();
      tried += "\n  " + path + ": " + (why != nullptr ? why : "not loadable");
      continue;
    }
    Api b;
    b.handle = h;
    b.path = path;
    const bool ok = bind(h, "ncclGetVersion", b.get_version) && bind(h, "ncclGetUniqueId", b.get_unique_id) &&
                    bind(h, "ncclCommInitRank", b.comm_init_rank) && bind(h, "ncclCommDestroy", b.comm_destroy) &&
                    bind(h, "ncclAllReduce", b.all_reduce) && bind(h, "ncclBroadcast", b.broadcast) &&
                    bind(h, "ncclAllGather", b.all_gather) && bind(h, "ncclGetErrorString", b.error_string);
    if (!ok) {
      dlclose(h);
      tried += "\n  " + path + ": loads, but is not NCCL (it lacks ncclGetUniqueId, ncclAllReduce, ...)";
      continue;
    }
    a = b;
    return a.path;
  }
  throw std::runtime_error("NCCL (libnccl.so.2) was not found; tried:" + tried);
}

bool library_open() { return api().handle != nullptr; }

int version() {
  int v = 0;
  check(opened().get_version(&v), "ncclGetVersion");
  return v;
}

std::vector<uint8_t> unique_id() {
  UniqueId id{};
  check(opened().get_unique_id(&id), "ncclGetUniqueId");
  return std::vector<uint8_t>(reinterpret_cast<uint8_t*>(id.internal), reinterpret_cast<uint8_t*>(id.internal) + kUniqueIdBytes);
}

uintptr_t comm_init(const std::vector<uint8_t>& id, int world, int rank) {
  if (id.size() != static_cast<size_t>(kUniqueIdBytes)) {
    throw std::invalid_argument("an NCCL unique id is " + std::to_string(kUniqueIdBytes) + " bytes, got " +
                                std::to_string(id.size()));
  }
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument("rank " + std::to_string(rank) + " is not one of " + std::to_string(world) + " ranks");
  }
  UniqueId uid{};
  std::memcpy(uid.internal, id.data(), kUniqueIdBytes);
  Comm comm = nullptr;
  check(opened().comm_init_rank(&comm, world, uid, rank), "ncclCommInitRank");
  return reinterpret_cast<uintptr_t>(comm);
}

void comm_destroy(uintptr_t comm) { check(opened().comm_destroy(reinterpret_cast<Comm>(comm)), "ncclCommDestroy"); }

void all_reduce(uintptr_t comm, uintptr_t buf, int64_t count, DType dtype, uintptr_t stream) {
  void* p = reinterpret_cast<void*>(buf);
  check(opened().all_reduce(p, p, static_cast<size_t>(count), nccl_type(dtype), kSum, reinterpret_cast<Comm>(comm),
                            reinterpret_cast<Stream>(stream)),
        "ncclAllReduce");
}

void broadcast(uintptr_t comm, uintptr_t buf, int64_t count, DType dtype, int root, uintptr_t stream) {
  void* p = reinterpret_cast<void*>(buf);
  check(opened().broadcast(p, p, static_cast<size_t>(count), nccl_type(dtype), root, reinterpret_cast<Comm>(comm),
                           reinterpret_cast<Stream>(stream)),
        "ncclBroadcast");
}

void all_gather(uintptr_t comm, uintptr_t send, uintptr_t recv, int64_t count, DType dtype, uintptr_t stream) {
  check(opened().all_gather(reinterpret_cast<const void*>(send), reinterpret_cast<void*>(recv),
                            static_cast<size_t>(count), nccl_type(dtype), reinterpret_cast<Comm>(comm),
                            reinterpret_cast<Stream>(stream)),
        "ncclAllGather");
}

}  // namespace helexa::nccl
