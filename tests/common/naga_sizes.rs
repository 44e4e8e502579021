//! Sizes naga computes for the WGSL structs, to hold against their Rust mirrors.
#![allow(dead_code)]

use wgpu_optim::shaders::KernelDef;

/// The size of struct `name` in the kernel's WGSL, as naga lays it out.
pub fn wgsl_size(k: KernelDef, name: &str) -> usize {
    let module = naga::front::wgsl::parse_str(k.source)
        .unwrap_or_else(|e| panic!("{}: {}", k.entry, e.emit_to_string(k.source)));
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let (handle, _) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in {}", k.entry));
    layouter[handle].size as usize
}

/// Each (kernel, WGSL struct, Rust size): the sizes agree, and with `stride16` each is a
/// multiple of 16 bytes (a uniform array's stride then equals the struct size).
pub fn assert_wgsl_sizes(cases: &[(KernelDef, &str, usize)], stride16: bool) {
    for &(k, name, rust_size) in cases {
        assert_eq!(wgsl_size(k, name), rust_size, "{name}");
        if stride16 {
            assert_eq!(rust_size % 16, 0, "{name}: uniform array stride");
        }
    }
}
