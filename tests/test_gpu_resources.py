"""The parsers and the occupancy rule of bench/gpu_compile.py (the GPU resource table of
docs/kernels.md), on captured ptxas / XLA thunk output: no CUDA plugin needed."""
import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from bench import gpu_compile as G  # noqa: E402


def test_resource_parsers(tmp_path):
    ptx = """ptxas info    : Compiling entry function 'snnkern_recurrent_bwd' for 'sm_90a'
ptxas info    : Function properties for snnkern_recurrent_bwd
ptxas         .     40 bytes stack frame, 44 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes smem
"""
    assert G.parse_ptxas(ptx) == {"snnkern_recurrent_bwd": dict(arch="sm_90a", stack=40, spill_stores=44,
                                                                spill_loads=36, registers=255, smem_static=16)}
    (tmp_path / "m.thunk_sequence.txt").write_text(
        "008: kCustomKernel [prev=007 (1) | next=009 (1)] snnkern_neuron_fwd grid: [1, 1, 2] threads: [128, 1, 1]  "
        "shared_memory: 2048 bytes\n")
    assert G.parse_thunks(str(tmp_path)) == {"snnkern_neuron_fwd": dict(grid=(1, 1, 2), threads=128, smem_dynamic=2048)}
    # 255 registers x 4 warps: 8192 registers per warp -> 8 warps per SM; 64 registers x 4 warps -> 32
    assert G.occupancy(255, 128, 0) == (8, "registers")
    assert G.occupancy(64, 128, 0) == (32, "registers")
    assert G.occupancy(32, 128, 100 * 1024) == (8, "shared memory")     # 2 blocks of 101 KiB in 228 KiB
    assert G.occupancy(16, 256, 0) == (64, "warps")


def test_kernel_calls_and_docs_block(tmp_path):
    line = ('  %pallas_call.0 = (f32[2,4,128]{2,1,0}) custom-call(%p), custom_call_target="__gpu$xla.gpu.triton", '
            'api_version=API_VERSION_TYPED_FFI, backend_config={debug = false, grid_x = 4 : i32, grid_y = 1 : i32, '
            'grid_z = 2 : i32, ir = "ML\\EFR", name = "snnkern_recurrent_fwd", num_stages = 1 : i32, num_warps = 16 : i32}')
    assert G.kernel_calls("%x = f32[] add(%a, %b)\n" + line) == [
        dict(name="snnkern_recurrent_fwd", num_warps=16, num_stages=1, grid=(4, 1, 2))]
    res = [dict(case="rec:LIF:128:float32", kernels=[dict(name="snnkern_recurrent_fwd", num_warps=16, registers=72,
                                                         spill_stores=0, spill_loads=0, smem_static=0,
                                                         smem_dynamic=81920, threads=512, occupancy_warps=16,
                                                         limited_by="registers")]),
           dict(case="rec:LIF:256:float32", error="JaxRuntimeError: RESOURCE_EXHAUSTED: Shared memory size limit exceeded")]
    table = G.markdown(res)
    assert "| `rec:LIF:128:float32` | recurrent_fwd | 16 | 72 | 0 / 0 | 80.0 KiB | 16 | registers |" in table
    assert "**compile error**" in table and "RESOURCE_EXHAUSTED" in table
    doc = tmp_path / "k.md"
    doc.write_text(f"# K\n\nbefore\n{G.MARK_BEGIN}\nold\n{G.MARK_END}\nafter\n")
    G.write_docs(str(doc), table)
    text = doc.read_text()
    assert "old" not in text and table in text and text.startswith("# K\n\nbefore\n") and text.endswith("after\n")
