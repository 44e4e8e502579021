// copy.wgsl: the streaming-copy baseline optbench measures every optimizer against.
//
// dst[i] = src[i] for the first `len` f32s of a buffer, as whole vec4s; the last vec4 of the
// copy is lane-masked, so elements past `len` are left exactly as they were. A copy moves
// 8 bytes per element (one read, one write): the most bandwidth a kernel that reads and writes
// every element once can reach on this adapter. Owned by src/bench.rs (`CopyKernel`).
//
// Work split: every invocation copies VEC_PER_INV vec4s, strided by the workgroup width so that
// neighbouring invocations touch neighbouring vec4s. Grids wider than the device's per-dimension
// limit (65535 workgroups) spill into y; the workgroup's linear id is x + y * width, and the
// tail of the last row is skipped. Copies larger than one storage binding are split by the host
// into binding windows, one dispatch each, each with its own `CopyWindow` uniform.
//
// WG_SIZE and VEC_PER_INV are pipeline-overridable constants so `optbench tune-copy` can sweep
// them; the defaults are the fastest measured on lavapipe and equal CopyConfig::default()
// (src/bench.rs; tests/bench_tools.rs checks they agree). See PERFORMANCE.md.
//
// Bindings (group 0):
//   0  uniform             CopyWindow  vec4s in this window and valid lanes of the last one
//   1  storage, read       src         this window of the source, as vec4
//   2  storage, read_write dst         the same window of the destination

override WG_SIZE: u32 = 512u;
override VEC_PER_INV: u32 = 2u;

struct CopyWindow {
    // vec4s to copy in this window (>= 1)
    vec_count: u32,
    // elements of the last vec4 that belong to the copy (1..=4)
    tail_lanes: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> win: CopyWindow;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn copy_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    let base = group * WG_SIZE * VEC_PER_INV + lid;
    let last = win.vec_count - 1u;
    for (var k = 0u; k < VEC_PER_INV; k++) {
        let i = base + k * WG_SIZE;
        if (i < last) {
            dst[i] = src[i];
        } else if (i == last) {
            let keep = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(win.tail_lanes);
            dst[i] = select(dst[i], src[i], keep);
        }
    }
}
