// enable_f16.wgsl: the first line of every native-f16 composition (a WGSL directive must come
// before any declaration, so this file leads; the device needs wgpu's SHADER_F16 feature).
enable f16;
