// The interface between the shared FFI runtime (runtime.cc, compiled once) and the per-neuron
// kernels generated from a step function (one small translation unit each, no FFI header).
#pragma once
#include <cstdint>

#define SNN_MAX 16  // parameters / state entries a generated kernel takes
#define SNN_BLK 64  // neurons a kernel keeps in registers / L1 across all T steps

struct XLA_FFI_CallFrame;
struct XLA_FFI_Error;

// One call of a time loop: B batch rows of N neurons over T steps. Sequences are (B, T, N),
// per-neuron arrays (B, N); a null pointer is a sequence not asked for.
struct SnnJob {
  int64_t B, T, N;
  int64_t spike_mask;  // state entries stored as bool (exactly 0/1)
  int64_t last_from;   // backward: the last state entry entering step t is 0: stored, 1: reads[t], 2: outs[t-1]
  const void* p[SNN_MAX];   // parameters, per neuron
  const void* s0[SNN_MAX];  // initial state
  const void* x;            // input sequence
  // forward outputs
  void* sT[SNN_MAX];   // final state
  void* out;           // step outputs
  void* read;          // state[-1] entering each step
  void* res[SNN_MAX];  // residuals: the state entering each step (bool for spike entries)
  // backward inputs and outputs
  const void* res_in[SNN_MAX];
  const void* last;    // reads or outs (see last_from)
  const void* g_sT[SNN_MAX];
  const void* g_out;
  const void* g_read;
  void* g_p[SNN_MAX];  // per-neuron parameter cotangents
  void* g_s0[SNN_MAX];
  void* g_x;
};

typedef void (*SnnBlockFn)(const SnnJob* job, int64_t b, int64_t n0, int64_t nb);

struct SnnKernel {
  int32_t np, ns, elem_bytes;
  SnnBlockFn fwd, bwd;
};

extern "C" XLA_FFI_Error* snnkern_native_fwd(XLA_FFI_CallFrame* frame, const SnnKernel* k);
extern "C" XLA_FFI_Error* snnkern_native_bwd(XLA_FFI_CallFrame* frame, const SnnKernel* k);
