// elementwise.wgsl: the chunk body every elementwise optimizer pass shares (adam.wgsl, sgd.wgsl,
// ...): which vec4s of its chunk an invocation updates, the packed path over several small
// tensors, the frozen-tensor skip and the per-group hyperparameter load. Composed after
// common.wgsl and the storage prelude, before the family file
// (`kernel_source!("elementwise.wgsl" + "adam.wgsl")`). WGSL module-scope declarations may come
// in any order, so this file uses the family's declarations:
//   hypers      array of the family's Hyper struct, one per parameter group
//   tensors     array of the family's Tensor struct, with `live` and `group` (index into hypers)
//   update_vec  fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: Tensor, hp: Hyper)
//               updates vec4 i of the params window and vec4 si of the state windows, storing
//               only the lanes in `mask` (the others are padding and keep their value, zero)
// The family's entry points stay thin and named per family (kernel identity, the pipeline
// cache and the tuning cache key on them): each calls `elementwise_chunk` with a `mode` that
// goes through to `update_vec` unchanged, for a family whose passes share one body
// (schedule_free.wgsl); the others pass 0 and ignore it.

fn elementwise_chunk(mode: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let c = chunk_for(wid, nwg);
    // Idle invocations (past the end of a short chunk) leave before the tensor-table load.
    if (!c.ok || lid * 4u >= c.len) {
        return;
    }
    if (PACKED) {
        // Several small tensors: each vec4 loads its own tensor's scalars (neighbours share
        // them, so the loads mostly hit the cache).
        for (var k = 0u; k < VEC_PER_LANE; k++) {
            let v = k * WG_SIZE + lid;
            if (v * 4u >= c.len) {
                break;
            }
            let pv = packed_vec(c, v);
            let t = tensors[pv.x];
            if (t.live == 0u) {
                continue;
            }
            update_vec(mode, c.base + v, c.sbase + v, first_lanes(pv.y), t, hypers[t.group]);
        }
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup; the
    // group comes with the chunk, so this load does not wait for the tensor table's.
    let hp = hypers[c.group];
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        update_vec(mode, c.base + v, c.sbase + v, lane_mask(c.len, v), t, hp);
    }
}
