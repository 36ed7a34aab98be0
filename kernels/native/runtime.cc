// The XLA FFI side of the native neuron loops (compiled once, shared by every generated kernel):
// decodes the call frame into an SnnJob and spreads blocks of SNN_BLK neurons over the cores.
// A generated kernel's entry points call snnkern_native_fwd / _bwd with its SnnKernel.
#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

#include "snnkern_native.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

thread_local const SnnKernel* current = nullptr;

struct Cursor {  // the next argument / result of a call frame
  ffi::RemainingArgs& args;
  ffi::RemainingRets& rets;
  size_t a = 0, r = 0;
  ffi::Error err = ffi::Error::Success();
  const void* arg() {
    auto b = args.get<ffi::AnyBuffer>(a++);
    if (!b.has_value()) { err = ffi::Error::InvalidArgument("snnkern native: missing argument"); return nullptr; }
    return b->untyped_data();
  }
  void* ret() {
    auto b = rets.get<ffi::AnyBuffer>(r++);
    if (!b.has_value()) { err = ffi::Error::InvalidArgument("snnkern native: missing result"); return nullptr; }
    return (*b)->untyped_data();
  }
};

ffi::Error shape(ffi::RemainingArgs& args, const SnnKernel* k, int64_t core_rank, SnnJob& job) {
  auto x = args.get<ffi::AnyBuffer>(k->np + k->ns);
  if (!x.has_value()) return ffi::Error::InvalidArgument("snnkern native: no input sequence");
  auto dims = x->dimensions();
  int64_t rank = dims.size(), lead = rank - core_rank;
  if (core_rank < 1 || lead < 0) return ffi::Error::InvalidArgument("snnkern native: bad input rank");
  job.B = job.N = 1;
  for (int64_t d = 0; d < lead; ++d) job.B *= dims[d];
  job.T = dims[lead];
  for (int64_t d = lead + 1; d < rank; ++d) job.N *= dims[d];
  return ffi::Error::Success();
}

int threads_for(const SnnJob& job, int64_t blocks) {
  int n = (int)std::thread::hardware_concurrency();
  if (const char* e = std::getenv("SNNKERN_NATIVE_THREADS")) n = std::atoi(e);
  if (job.B * job.T * job.N < (int64_t(1) << 15)) n = 1;  // a thread start costs more than the loop
  return (int)std::max<int64_t>(1, std::min<int64_t>(n, blocks));
}

void run_blocks(const SnnJob& job, SnnBlockFn fn) {
  const int64_t per_row = (job.N + SNN_BLK - 1) / SNN_BLK, blocks = job.B * per_row;
  auto work = [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      int64_t b = q / per_row, n0 = (q % per_row) * SNN_BLK;
      fn(&job, b, n0, std::min<int64_t>(SNN_BLK, job.N - n0));
    }
  };
  const int nt = threads_for(job, blocks);
  std::vector<std::thread> pool;
  for (int i = 1; i < nt; ++i) pool.emplace_back(work, blocks * i / nt, blocks * (i + 1) / nt);
  work(0, blocks / nt);
  for (auto& th : pool) th.join();
}

ffi::Error Fwd(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t core_rank, int64_t want_out,
               int64_t want_read, int64_t keep_mask, int64_t spike_mask) {
  const SnnKernel* k = current;
  SnnJob job = {};
  if (auto e = shape(args, k, core_rank, job); e.failure()) return e;
  job.spike_mask = spike_mask;
  Cursor c{args, rets};
  for (int i = 0; i < k->np; ++i) job.p[i] = c.arg();
  for (int i = 0; i < k->ns; ++i) job.s0[i] = c.arg();
  job.x = c.arg();
  for (int i = 0; i < k->ns; ++i) job.sT[i] = c.ret();
  if (want_out) job.out = c.ret();
  if (want_read) job.read = c.ret();
  for (int i = 0; i < k->ns; ++i) if (keep_mask >> i & 1) job.res[i] = c.ret();
  if (c.err.failure()) return c.err;
  run_blocks(job, k->fwd);
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t core_rank, int64_t want_out,
               int64_t want_read, int64_t keep_mask, int64_t spike_mask, int64_t last_from) {
  const SnnKernel* k = current;
  SnnJob job = {};
  if (auto e = shape(args, k, core_rank, job); e.failure()) return e;
  job.spike_mask = spike_mask;
  job.last_from = last_from;
  Cursor c{args, rets};
  for (int i = 0; i < k->np; ++i) job.p[i] = c.arg();
  for (int i = 0; i < k->ns; ++i) job.s0[i] = c.arg();
  job.x = c.arg();
  for (int i = 0; i < k->ns; ++i) if (keep_mask >> i & 1) job.res_in[i] = c.arg();
  if (last_from) job.last = c.arg();
  for (int i = 0; i < k->ns; ++i) job.g_sT[i] = c.arg();
  if (want_out) job.g_out = c.arg();
  if (want_read) job.g_read = c.arg();
  for (int i = 0; i < k->np; ++i) job.g_p[i] = c.ret();
  for (int i = 0; i < k->ns; ++i) job.g_s0[i] = c.ret();
  job.g_x = c.ret();
  if (c.err.failure()) return c.err;
  run_blocks(job, k->bwd);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(kFwd, Fwd,
                       ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attr<int64_t>("core_rank")
                           .Attr<int64_t>("want_out").Attr<int64_t>("want_read").Attr<int64_t>("keep_mask")
                           .Attr<int64_t>("spike_mask"));
XLA_FFI_DEFINE_HANDLER(kBwd, Bwd,
                       ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attr<int64_t>("core_rank")
                           .Attr<int64_t>("want_out").Attr<int64_t>("want_read").Attr<int64_t>("keep_mask")
                           .Attr<int64_t>("spike_mask").Attr<int64_t>("last_from"));

extern "C" XLA_FFI_Error* snnkern_native_fwd(XLA_FFI_CallFrame* frame, const SnnKernel* k) {
  current = k;
  return kFwd(frame);
}

extern "C" XLA_FFI_Error* snnkern_native_bwd(XLA_FFI_CallFrame* frame, const SnnKernel* k) {
  current = k;
  return kBwd(frame);
}
