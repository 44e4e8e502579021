//! Checkpoints: an optimizer's whole state (and optionally the params) in one safetensors
//! file, close to PyTorch's `optimizer.state_dict()`.
//!
//! # Format (`wgpu-optim-state/1`, a superset of the fixtures' `torch-optim-state/1`)
//!
//! | tensor | dtype, shape | content |
//! |---|---|---|
//! | `<param>` | F32, the param's shape | the parameter (only when saved with params) |
//! | `<param>.<key>` | F32, the param's shape | state buffer `key` under PyTorch's name (`exp_avg`, `momentum_buffer`, ...) |
//! | `<param>.<key>` | F64, `[]` | a host scalar state (NAdam's `mu_product`, ASGD's `eta`, `mu`) |
//! | `<param>.step` | F32 `[]` (F64 from 2^24 steps on, so it stays exact) | the tensor's step count |
//!
//! As in PyTorch, a tensor that has never stepped has no state entries (its state is the
//! configuration's initial value). The header's `__metadata__` holds `format`, `optimizer` (the
//! optimizer's name) and `param_groups`: a JSON list, one object per group in group order, with
//! `params` (tensor names), every hyperparameter under PyTorch's key (`lr` is the current lr,
//! `initial_lr` the base lr schedules scale), the group's `family`, and its host scalars
//! (Schedule-Free's `k`, `lr_max`, ...). `wgpu_optim` (JSON) records what PyTorch has no place
//! for: the frozen tensors and the train/eval mode.
//!
//! Loading accepts both formats. A `torch-optim-state/1` file (written from PyTorch, see
//! `tests/fixtures/torch_checkpoints/`) names its optimizer once (`sgd`, `adam`, `adamw`,
//! `rmsprop`, `adagrad`); SGD keeps no `step`, so a tensor with a momentum buffer is taken to
//! have stepped once (all SGD needs: whether its buffer exists).
//!
//! # Guarantees
//!
//! - [`Checkpoint::save`] writes a temporary file beside the target, fsyncs it, renames it over
//!   the target and fsyncs the directory: a crash at any point leaves either the old file or the
//!   new one, never a torn one.
//! - Loading parses with bounds checks only (the safetensors crate checks the header length,
//!   the offsets and every tensor's byte count against the file; we check dtypes, shapes,
//!   names, the metadata and every value), so corrupt or hostile bytes give
//!   [`Error::CorruptCheckpoint`], never a panic, and allocate at most the file's size.
//! - `load_checkpoint` on an optimizer checks everything against the optimizer (kinds, groups,
//!   tensor names, shapes, dtypes, state names, hyperparameters) before it changes anything: a
//!   rejected load ([`Error::CheckpointMismatch`] naming the first difference) leaves params
//!   and state as they were.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Map, Value};

use crate::arena::TensorInfo;
use crate::error::{Error, Result};
use crate::optim::book::Book;
use crate::optim::face::ParamGroupTable;
use crate::optim::table::OptimizerConfig;

/// The format this library writes.
pub const FORMAT: &str = "wgpu-optim-state/1";
/// The format of checkpoints converted from PyTorch (see the module docs); loaded, not written.
pub const TORCH_FORMAT: &str = "torch-optim-state/1";

/// Step counts from here on are stored as F64 (an f32 holds every integer below 2^24).
const F32_EXACT_STEPS: u64 = 1 << 24;

/// One tensor of a checkpoint: its dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// A checkpoint in memory: named tensors and string metadata, as in a safetensors file.
/// Optimizers fill one with `save_checkpoint` and read one with `load_checkpoint`; wrappers
/// (Lookahead, schedules) add their own entries beside the optimizer's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    tensors: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::CorruptCheckpoint(msg.into())
}

fn mismatch(msg: impl Into<String>) -> Error {
    Error::CheckpointMismatch(msg.into())
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an F32 tensor. `data.len()` must equal the product of `shape`.
    pub fn insert_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt(format!("{name}: shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(Error::LengthMismatch {
                what: format!("checkpoint tensor {name} of shape {shape:?}"),
                expected: n,
                got: data.len(),
            });
        }
        self.tensors.insert(
            name.to_string(),
            Entry {
                dtype: Dtype::F32,
                shape: shape.to_vec(),
                bytes: bytemuck::cast_slice(data).to_vec(),
            },
        );
        Ok(())
    }

    /// Adds (or replaces) a 0-dimensional F64 tensor.
    pub fn insert_f64_scalar(&mut self, name: &str, value: f64) {
        self.tensors.insert(
            name.to_string(),
            Entry {
                dtype: Dtype::F64,
                shape: Vec::new(),
                bytes: value.to_le_bytes().to_vec(),
            },
        );
    }

    /// Removes a tensor, returning whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.tensors.remove(name).is_some()
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(|s| s.as_str()).collect()
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// An F32 tensor's values (row-major); any other dtype is [`Error::CorruptCheckpoint`].
    pub fn get_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| mismatch(format!("the checkpoint has no tensor {name:?}")))?;
        if e.dtype != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor {name:?} is {:?}, expected F32",
                e.dtype
            )));
        }
        Ok(e.bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A one-element tensor (shape `[]` or `[1]`) of F32, F64, I64 or I32, as f64.
    pub fn get_scalar(&self, name: &str) -> Result<f64> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| mismatch(format!("the checkpoint has no tensor {name:?}")))?;
        if !(e.shape.is_empty() || e.shape == [1]) {
            return Err(corrupt(format!(
                "{name:?} should hold one value, has shape {:?}",
                e.shape
            )));
        }
        let b = e.bytes.as_slice();
        let v = match (e.dtype, b.len()) {
            (Dtype::F32, 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            (Dtype::I32, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            (Dtype::F64, 8) => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            (Dtype::I64, 8) => {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
            }
            (d, _) => {
                return Err(corrupt(format!(
                    "{name:?} is {d:?}; a scalar must be F32, F64, I32 or I64"
                )))
            }
        };
        Ok(v)
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(|s| s.as_str())
    }

    /// Sets a metadata value (wrappers store their own JSON under their own key).
    pub fn set_metadata(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.insert(key.to_string(), value.into());
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(k, e)| {
                TensorView::new(e.dtype, e.shape.clone(), &e.bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|err| corrupt(format!("{k}: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| corrupt(e.to_string()))
    }

    /// Parses safetensors bytes. Never panics; allocates at most about `bytes.len()` again.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
        let mut out = Checkpoint::new();
        if let Some(m) = meta.metadata() {
            out.metadata = m.clone().into_iter().collect();
        }
        for (name, view) in st.iter() {
            out.tensors.insert(
                name.to_string(),
                Entry {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            );
        }
        Ok(out)
    }

    /// Writes the checkpoint to `path` atomically (see the module docs).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_pending(path)?.commit()
    }

    /// The first half of [`Checkpoint::save`]: writes and fsyncs the temporary file beside
    /// `path`, leaving `path` itself untouched until [`PendingCheckpoint::commit`]. Dropping the
    /// result without committing removes the temporary file.
    pub fn write_pending(&self, path: impl AsRef<Path>) -> Result<PendingCheckpoint> {
        let path = path.as_ref().to_path_buf();
        let bytes = self.to_bytes()?;
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Io {
                path: path.display().to_string(),
                message: "not a file path".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&tmp, "writing the temporary checkpoint", e));
        }
        Ok(PendingCheckpoint {
            tmp,
            path,
            done: false,
        })
    }

    /// Reads and parses a checkpoint file, refusing files over `max_bytes` before reading them.
    pub fn load_with_limit(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        let path = path.as_ref();
        let len = std::fs::metadata(path)
            .map_err(|e| io_error(path, "reading the checkpoint", e))?
            .len();
        if len > max_bytes {
            return Err(Error::LimitExceeded {
                what: format!("checkpoint file {}", path.display()),
                value: len,
                limit: max_bytes,
                why: "the largest file this optimizer's state can make",
            });
        }
        let bytes = std::fs::read(path).map_err(|e| io_error(path, "reading the checkpoint", e))?;
        Self::from_bytes(&bytes)
    }

    /// Reads and parses a checkpoint file (of any size; see [`Checkpoint::load_with_limit`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_limit(path, u64::MAX)
    }
}

/// A checkpoint written to its temporary file, not yet renamed over the target.
#[derive(Debug)]
pub struct PendingCheckpoint {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl PendingCheckpoint {
    /// The temporary file.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| io_error(&self.path, "renaming the checkpoint into place", e))?;
        self.done = true;
        // The rename is durable once the directory entry is on disk.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                d.sync_all()
                    .map_err(|e| io_error(dir, "syncing the checkpoint's directory", e))?;
            }
        }
        Ok(())
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// What the engines give the checkpoint code: the bookkeeping, the tensors, and state access
/// by segment (member order).
/// What checkpoints need of an engine beyond its [`ParamGroupTable`] face: whole segments'
/// state, and the learned lrs.
pub(crate) trait StateAccess: ParamGroupTable {
    fn tensor_infos(&self) -> &[TensorInfo];
    /// State `name` of every member of segment `s`, in member order.
    fn read_segment(&self, s: usize, name: &str) -> Result<Vec<Vec<f32>>>;
    /// Writes state `name` of the listed members (local index, values) of segment `s`.
    /// Called only after every check has passed.
    fn write_segment(&mut self, s: usize, name: &str, members: &[(usize, Vec<f32>)]);
    /// The learned lr of every group (hypergradient rules), if some group learns it.
    fn read_learned(&self) -> Result<Option<Vec<f32>>>;
    /// Writes learned lrs back (checked by the caller).
    fn write_learned(&mut self, lrs: &[f32]) -> Result<()>;
}

fn shape_of(t: &TensorInfo) -> Vec<usize> {
    t.shape.clone().unwrap_or_else(|| vec![t.len])
}

/// Fills `ck` with the optimizer's state and metadata (params are added by the caller).
pub(crate) fn export(eng: &impl StateAccess) -> Result<Checkpoint> {
    let book = eng.book();
    let infos = eng.tensor_infos();
    let mut ck = Checkpoint::new();
    for (s, plan) in book.segments.iter().enumerate() {
        for st in &plan.states {
            let data = eng.read_segment(s, st.name)?;
            for (local, &i) in plan.members.iter().enumerate() {
                let t = &infos[i];
                if book.steps[i] == 0 || !book.tensor_states(i).iter().any(|x| x.name == st.name) {
                    continue;
                }
                // The state's own shape (Adafactor's row_var / col_var are not the param's).
                let shape = book.state_shape(i, st.name).unwrap_or_else(|| shape_of(t));
                ck.insert_f32(&format!("{}.{}", t.name, st.name), &shape, &data[local])?;
            }
        }
    }
    for (i, t) in infos.iter().enumerate() {
        if book.loc[i].is_none() || book.steps[i] == 0 {
            continue;
        }
        let steps = book.steps[i];
        let key = format!("{}.step", t.name);
        if steps < F32_EXACT_STEPS {
            ck.insert_f32(&key, &[], &[steps as f32])?;
        } else {
            ck.insert_f64_scalar(&key, steps as f64);
        }
        for (slot, name) in book.tensor_scalars(i).iter().enumerate() {
            ck.insert_f64_scalar(&format!("{}.{name}", t.name), book.scalars[i][slot]);
        }
    }
    let learned = eng.read_learned()?;
    let mut groups = Vec::with_capacity(book.groups.len());
    for (g, group) in book.groups.iter().enumerate() {
        let mut m = Map::new();
        let params: Vec<Value> = infos
            .iter()
            .enumerate()
            .filter(|(i, _)| book.loc[*i].is_some_and(|l| l.group == g))
            .map(|(_, t)| Value::String(t.name.clone()))
            .collect();
        m.insert("params".into(), Value::Array(params));
        m.insert("family".into(), group.config.family().into());
        m.extend(group.config.to_json());
        m.insert("initial_lr".into(), group.base_lr.into());
        if let (true, Some(l)) = (group.config.learns_lr(), &learned) {
            // The lr the next step starts from (hypergradient descent), exact as f32 -> f64.
            m.insert(LEARNED_LR_KEY.into(), f64::from(l[g]).into());
        }
        for (slot, name) in group.config.group_scalar_names().iter().enumerate() {
            m.insert((*name).into(), book.group_scalars[g][slot].into());
        }
        groups.push(Value::Object(m));
    }
    ck.set_metadata("format", FORMAT);
    ck.set_metadata("optimizer", book.name());
    ck.set_metadata("param_groups", Value::Array(groups).to_string());
    let frozen: Vec<Value> = infos
        .iter()
        .enumerate()
        .filter(|(i, _)| book.frozen[*i])
        .map(|(_, t)| Value::String(t.name.clone()))
        .collect();
    let mut extra = Map::new();
    extra.insert("frozen".into(), Value::Array(frozen));
    extra.insert("train_mode".into(), book.train_mode.into());
    ck.set_metadata("wgpu_optim", Value::Object(extra).to_string());
    Ok(ck)
}

/// The family of a torch optimizer id (`torch-optim-state/1`'s `optimizer` key).
fn torch_family(id: &str) -> Option<&'static str> {
    match id {
        "sgd" => Some("sgd"),
        "adam" | "adamw" => Some("adam"),
        "rmsprop" => Some("rmsprop"),
        "adagrad" => Some("adagrad"),
        _ => None,
    }
}

/// The state writes of a load: segment, state name, (member, values) pairs.
type StateWrites = Vec<(usize, &'static str, Vec<(usize, Vec<f32>)>)>;

/// Group key of a learned lr (hypergradient descent).
const LEARNED_LR_KEY: &str = "learned_lr";

/// Everything a load will set, computed and checked before anything changes.
struct Plan {
    book: Book,
    writes: StateWrites,
    /// Learned lrs, one per group, when some group learns its lr.
    learned: Option<Vec<f32>>,
    params: Vec<Option<Vec<f32>>>,
}

/// One `param_groups` entry, parsed and validated (not yet checked against an optimizer).
struct ParsedGroup {
    names: Vec<String>,
    family: &'static str,
    config: OptimizerConfig,
    initial_lr: Option<f64>,
    /// The entry's other keys (host scalars among them).
    rest: Map<String, Value>,
}

/// The format (`true`: PyTorch's) and the parsed `param_groups` of `ck`.
fn parse_groups(ck: &Checkpoint) -> Result<(bool, Vec<ParsedGroup>)> {
    let format = ck
        .metadata("format")
        .ok_or_else(|| corrupt("no `format` in the metadata"))?;
    let torch = match format {
        FORMAT => false,
        TORCH_FORMAT => true,
        other => {
            return Err(corrupt(format!(
                "format {other:?} (this library reads {FORMAT:?} and {TORCH_FORMAT:?})"
            )))
        }
    };
    let torch_id = ck.metadata("optimizer").unwrap_or("");
    let groups_json = ck
        .metadata("param_groups")
        .ok_or_else(|| corrupt("no `param_groups` in the metadata"))?;
    let groups: Vec<Value> = serde_json::from_str(groups_json)
        .map_err(|e| corrupt(format!("param_groups is not a JSON list: {e}")))?;
    let mut out = Vec::with_capacity(groups.len());
    for (g, gj) in groups.into_iter().enumerate() {
        let Value::Object(mut m) = gj else {
            return Err(corrupt(format!("param_groups[{g}] is not an object")));
        };
        let names = match m.remove("params") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(corrupt(format!(
                    "param_groups[{g}].params is not a list of names"
                )))
            }
        };
        let names = names
            .into_iter()
            .map(|n| match n {
                Value::String(s) => Ok(s),
                other => Err(corrupt(format!(
                    "param_groups[{g}].params holds a non-string {other}"
                ))),
            })
            .collect::<Result<Vec<String>>>()?;
        let family = if torch {
            torch_family(torch_id).ok_or_else(|| {
                corrupt(format!(
                    "unknown torch optimizer id {torch_id:?} (sgd, adam, adamw, rmsprop, adagrad)"
                ))
            })?
        } else {
            match m.get("family").and_then(|v| v.as_str()) {
                Some(f) => OptimizerConfig::families()
                    .iter()
                    .copied()
                    .find(|x| *x == f)
                    .ok_or_else(|| corrupt(format!("param_groups[{g}]: unknown family {f:?}")))?,
                None => return Err(corrupt(format!("param_groups[{g}] has no family"))),
            }
        };
        if torch && torch_id == "adamw" && !m.contains_key("decoupled_weight_decay") {
            m.insert("decoupled_weight_decay".into(), true.into());
        }
        let initial_lr = match m.get("initial_lr") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| corrupt(format!("param_groups[{g}].initial_lr = {v}")))?,
            ),
        };
        let config = OptimizerConfig::from_json(family, m.clone())
            .map_err(|e| corrupt(format!("param_groups[{g}]: {e}")))?;
        config.validate()?;
        out.push(ParsedGroup {
            names,
            family,
            config,
            initial_lr,
            rest: m,
        });
    }
    Ok((torch, out))
}

impl crate::ParamGroups {
    /// The parameter groups a checkpoint was saved with (tensor names and configurations),
    /// to build an optimizer that [`crate::Optimizer::load_checkpoint`] accepts it into.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let (_, groups) = parse_groups(ck)?;
        Ok(groups.into_iter().fold(Self::new(), |acc, g| {
            acc.group(crate::Select::names(g.names), g.config)
        }))
    }
}

fn plan(eng: &impl StateAccess, ck: &Checkpoint, want_params: bool) -> Result<Plan> {
    let infos = eng.tensor_infos();
    let old = eng.book();
    let (torch, groups) = parse_groups(ck)?;
    if groups.len() != old.groups.len() {
        return Err(mismatch(format!(
            "the checkpoint has {} parameter group(s), the optimizer {}",
            groups.len(),
            old.groups.len()
        )));
    }
    let mut book = old.clone();
    let index: HashMap<&str, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut learned: Vec<f32> = Vec::with_capacity(groups.len());
    for (g, pg) in groups.into_iter().enumerate() {
        let mut mine: Vec<&str> = infos
            .iter()
            .enumerate()
            .filter(|(i, _)| old.loc[*i].is_some_and(|l| l.group == g))
            .map(|(_, t)| t.name.as_str())
            .collect();
        let mut theirs: Vec<&str> = pg.names.iter().map(|s| s.as_str()).collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        if let Some(n) = theirs.iter().find(|n| !mine.contains(n)) {
            return Err(mismatch(format!(
                "parameter group {g}: the checkpoint has tensor {n:?}, which the optimizer's \
                 group {g} does not hold"
            )));
        }
        if let Some(n) = mine.iter().find(|n| !theirs.contains(n)) {
            return Err(mismatch(format!(
                "parameter group {g}: the optimizer's tensor {n:?} is not in the checkpoint's \
                 group {g}"
            )));
        }
        let expected = old.groups[g].config.family();
        if pg.family != expected {
            return Err(mismatch(format!(
                "parameter group {g} runs {expected}; the checkpoint's runs {}",
                pg.family
            )));
        }
        let config = pg.config;
        let allowed = old.segment_states(old.groups[g].segment);
        if let Some(s) = config.states().iter().find(|s| !allowed.contains(&s.name)) {
            return Err(mismatch(format!(
                "parameter group {g}: the checkpoint's configuration keeps {:?}, which this \
                 optimizer's segment did not allocate (build it with that option on)",
                s.name
            )));
        }
        let names = config.group_scalar_names();
        let mut gs = config.init_group_scalars();
        for (slot, name) in names.iter().enumerate() {
            match pg.rest.get(*name) {
                Some(v) => {
                    gs[slot] = v
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| corrupt(format!("param_groups[{g}].{name} = {v}")))?
                }
                None if torch => {}
                None => return Err(corrupt(format!("param_groups[{g}] has no {name}"))),
            }
        }
        book.group_scalars[g] = gs;
        let lr = config.lr() as f32;
        learned.push(match (config.learns_lr(), pg.rest.get(LEARNED_LR_KEY)) {
            (true, Some(v)) => v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| corrupt(format!("param_groups[{g}].{LEARNED_LR_KEY} = {v}")))?,
            _ => lr,
        });
        book.groups[g].base_lr = pg.initial_lr.unwrap_or(config.lr());
        book.groups[g].config = config;
    }

    // Every tensor name must be a param or `<param>.<key>` of a key the tensor keeps.
    let mut params: Vec<Option<Vec<f32>>> = vec![None; infos.len()];
    for name in ck.names() {
        if let Some(&i) = index.get(name) {
            let t = &infos[i];
            check_shape(ck, name, t)?;
            if want_params {
                params[i] = Some(ck.get_f32(name)?);
            }
            continue;
        }
        // Tensor names contain dots: the param is the longest known prefix before a dot.
        let split = name
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(|(k, _)| k)
            .rev()
            .find(|&k| index.contains_key(&name[..k]));
        let Some(k) = split else {
            return Err(mismatch(format!(
                "the checkpoint holds {name:?}, which is no tensor of this optimizer nor the \
                 state of one"
            )));
        };
        let (pname, key) = (&name[..k], &name[k + 1..]);
        let i = index[pname];
        let mut keys = book.tensor_state_names(i);
        keys.push("step");
        if !keys.contains(&key) {
            return Err(mismatch(format!(
                "the checkpoint holds state {key:?} for {pname:?}, which keeps {keys:?}"
            )));
        }
    }
    if want_params {
        if let Some(i) = params.iter().position(|p| p.is_none()) {
            return Err(mismatch(format!(
                "the checkpoint holds no params for {:?} (saved without params?)",
                infos[i].name
            )));
        }
    }

    // Step counts, host scalars and state buffers per tensor.
    let mut writes: StateWrites = Vec::new();
    for (s, plan) in book.segments.iter().enumerate() {
        for st in &plan.states {
            writes.push((s, st.name, Vec::new()));
        }
    }
    for (i, t) in infos.iter().enumerate() {
        let Some(loc) = book.loc[i] else { continue };
        let states = book.tensor_states(i);
        let step_key = format!("{}.step", t.name);
        let any_state = states
            .iter()
            .any(|st| ck.contains(&format!("{}.{}", t.name, st.name)));
        let steps = if ck.contains(&step_key) {
            let v = ck.get_scalar(&step_key)?;
            if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= (1u64 << 53) as f64) {
                return Err(corrupt(format!("{step_key} = {v} is not a step count")));
            }
            v as u64
        } else if torch && book.groups[loc.group].config.family() == "sgd" {
            u64::from(any_state)
        } else if any_state {
            return Err(corrupt(format!("{:?} has state but no step", t.name)));
        } else {
            0
        };
        book.steps[i] = steps;
        let mut scalars = book.groups[loc.group].config.init_scalars();
        for (slot, name) in book.tensor_scalars(i).iter().enumerate() {
            let key = format!("{}.{name}", t.name);
            if ck.contains(&key) {
                let v = ck.get_scalar(&key)?;
                if !v.is_finite() {
                    return Err(corrupt(format!("{key} = {v}")));
                }
                scalars[slot] = v;
            } else if steps > 0 {
                return Err(mismatch(format!(
                    "{:?} has stepped but the checkpoint has no {key:?}",
                    t.name
                )));
            }
        }
        book.scalars[i] = scalars;
        for st in &book.segments[loc.segment].states {
            let key = format!("{}.{}", t.name, st.name);
            let keeps = states.iter().any(|x| x.name == st.name);
            let shape = book.state_shape(i, st.name).unwrap_or_default();
            let data = if keeps && ck.contains(&key) {
                check_state_shape(ck, &key, t, &shape)?;
                ck.get_f32(&key)?
            } else if keeps && steps > 0 {
                return Err(mismatch(format!(
                    "{:?} has stepped but the checkpoint has no {key:?}",
                    t.name
                )));
            } else {
                // Never stepped (or a slot its configuration does not use): the initial value.
                vec![st.init; book.state_len(i, st.name)]
            };
            if let Some(w) = writes
                .iter_mut()
                .find(|w| w.0 == loc.segment && w.1 == st.name)
            {
                w.2.push((loc.local, data));
            }
        }
    }

    if !torch {
        let extra: Value = match ck.metadata("wgpu_optim") {
            Some(s) => serde_json::from_str(s)
                .map_err(|e| corrupt(format!("wgpu_optim metadata is not JSON: {e}")))?,
            None => return Err(corrupt("no `wgpu_optim` in the metadata")),
        };
        let frozen = extra
            .get("frozen")
            .and_then(|v| v.as_array())
            .ok_or_else(|| corrupt("wgpu_optim.frozen is not a list"))?;
        book.frozen = vec![false; infos.len()];
        for f in frozen {
            let i = f
                .as_str()
                .and_then(|n| index.get(n))
                .ok_or_else(|| mismatch(format!("wgpu_optim.frozen names {f}, no tensor here")))?;
            book.frozen[*i] = true;
        }
        book.train_mode = extra
            .get("train_mode")
            .and_then(|v| v.as_bool())
            .ok_or_else(|| corrupt("wgpu_optim.train_mode is not a bool"))?;
    }
    let learns = book.groups.iter().any(|g| g.config.learns_lr());
    Ok(Plan {
        book,
        writes,
        learned: learns.then_some(learned),
        params,
    })
}

fn check_shape(ck: &Checkpoint, name: &str, t: &TensorInfo) -> Result<()> {
    let shape = ck.shape(name).unwrap_or(&[]);
    let ok = match &t.shape {
        Some(s) => s.as_slice() == shape,
        None => shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(t.len),
    };
    if ok {
        Ok(())
    } else {
        Err(mismatch(format!(
            "{name:?} has shape {shape:?}; tensor {:?} is {:?}",
            t.name,
            shape_of(t)
        )))
    }
}

/// A state tensor's shape must be the one its rule gives it ([`crate::optim::Rule::state_shape`]);
/// a state shaped like its param is checked as the param is (any shape of its length when the
/// tensor was declared without one).
fn check_state_shape(ck: &Checkpoint, name: &str, t: &TensorInfo, want: &[usize]) -> Result<()> {
    if want == shape_of(t).as_slice() {
        return check_shape(ck, name, t);
    }
    let shape = ck.shape(name).unwrap_or(&[]);
    if shape == want {
        Ok(())
    } else {
        Err(mismatch(format!(
            "{name:?} has shape {shape:?}; this optimizer keeps it as {want:?}"
        )))
    }
}

/// Checks `ck` against the optimizer and, when every check passed, installs it. Returns the
/// params (one per arena tensor) when `want_params`.
pub(crate) fn import(
    eng: &mut impl StateAccess,
    ck: &Checkpoint,
    want_params: bool,
) -> Result<Option<Vec<Vec<f32>>>> {
    let Plan {
        book,
        writes,
        learned,
        params,
    } = plan(eng, ck, want_params)?;
    for (s, name, members) in &writes {
        eng.write_segment(*s, name, members);
    }
    *eng.book_mut() = book;
    if let Some(l) = learned {
        // Checked above (one finite value per group, and some group learns): cannot fail.
        eng.write_learned(&l)?;
    }
    Ok(want_params.then(|| params.into_iter().map(Option::unwrap_or_default).collect()))
}

/// The most bytes a checkpoint of this optimizer can take: every tensor as params and in every
/// state slot, plus room for scalars and the JSON header.
pub(crate) fn max_file_bytes(eng: &impl StateAccess) -> u64 {
    let book = eng.book();
    let infos = eng.tensor_infos();
    let mut elems: u64 = 0;
    for (i, t) in infos.iter().enumerate() {
        elems += t.len as u64;
        for st in book.tensor_states(i) {
            elems += book.state_len(i, st.name) as u64;
        }
    }
    elems * 4 + 64 * 1024 * infos.len() as u64 + (16 << 20)
}

impl StateAccess for crate::Optimizer {
    fn tensor_infos(&self) -> &[TensorInfo] {
        self.layout().tensors()
    }
    fn read_segment(&self, s: usize, name: &str) -> Result<Vec<Vec<f32>>> {
        self.read_segment_members(s, name)
    }
    fn write_segment(&mut self, s: usize, name: &str, members: &[(usize, Vec<f32>)]) {
        self.write_segment_members(s, name, members)
    }
    fn read_learned(&self) -> Result<Option<Vec<f32>>> {
        self.read_learned_lr()
    }
    fn write_learned(&mut self, lrs: &[f32]) -> Result<()> {
        self.write_learned_lr(lrs)
    }
}

impl StateAccess for crate::CpuOptimizer {
    fn tensor_infos(&self) -> &[TensorInfo] {
        crate::CpuOptimizer::tensor_infos(self)
    }
    fn read_segment(&self, s: usize, name: &str) -> Result<Vec<Vec<f32>>> {
        Ok(self.read_segment_members(s, name))
    }
    fn write_segment(&mut self, s: usize, name: &str, members: &[(usize, Vec<f32>)]) {
        self.write_segment_members(s, name, members)
    }
    fn read_learned(&self) -> Result<Option<Vec<f32>>> {
        self.read_learned_lr()
    }
    fn write_learned(&mut self, lrs: &[f32]) -> Result<()> {
        self.write_learned_lr(lrs)
    }
}

fn add_params<P: AsRef<[f32]>>(
    ck: &mut Checkpoint,
    infos: &[TensorInfo],
    params: &[P],
) -> Result<()> {
    if params.len() != infos.len() {
        return Err(Error::LengthMismatch {
            what: "params (number of tensors)".into(),
            expected: infos.len(),
            got: params.len(),
        });
    }
    for (t, p) in infos.iter().zip(params) {
        ck.insert_f32(&t.name, &shape_of(t), p.as_ref())?;
    }
    Ok(())
}

impl crate::Optimizer {
    /// The optimizer's whole state as a [`Checkpoint`] (one readback per state buffer), with
    /// the arena's params too when `arena` is given, and the AMP guard's loss-scale state
    /// when one is attached. See [`crate::checkpoint`] for the format.
    pub fn save_checkpoint(&mut self, arena: Option<&crate::ParamArena>) -> Result<Checkpoint> {
        self.context().check_alive()?;
        // A step whose non-finite check is unread may have to be taken back first.
        self.found_inf()?;
        let mut ck = export(self)?;
        if let Some(st) = self.amp_state()? {
            ck.set_metadata(GRAD_SCALER_KEY, grad_scaler_json(&st));
        }
        if let Some(a) = arena {
            self.check_arena(a)?;
            add_params(&mut ck, self.layout().tensors(), &a.read_all_params()?)?;
        }
        Ok(ck)
    }

    /// Installs a checkpoint (this library's or one converted from PyTorch): step counts,
    /// state, every group's hyperparameters, host scalars, frozen flags and mode; with
    /// `arena`, the checkpoint's params are written into it as well (and must be present).
    /// Everything is checked first: on error nothing changes.
    pub fn load_checkpoint(
        &mut self,
        ck: &Checkpoint,
        arena: Option<&crate::ParamArena>,
    ) -> Result<()> {
        self.context().check_alive()?;
        if let Some(a) = arena {
            self.check_arena(a)?;
        }
        self.found_inf()?;
        let amp = match (ck.metadata(GRAD_SCALER_KEY), self.amp()) {
            (Some(s), Some(_)) => Some(parse_grad_scaler(s)?),
            _ => None,
        };
        let params = import(self, ck, arena.is_some())?;
        if let Some(st) = amp {
            self.set_amp_state(&st);
        }
        if let (Some(a), Some(p)) = (arena, params) {
            a.write_all_params(&p)?;
        }
        Ok(())
    }

    /// [`Optimizer::save_checkpoint`] then an atomic [`Checkpoint::save`] to `path`.
    ///
    /// [`Optimizer::save_checkpoint`]: crate::Optimizer::save_checkpoint
    pub fn save_checkpoint_file(
        &mut self,
        path: impl AsRef<Path>,
        arena: Option<&crate::ParamArena>,
    ) -> Result<()> {
        self.save_checkpoint(arena)?.save(path)
    }

    /// Reads `path` (refusing a file larger than this optimizer's state could make) and
    /// installs it as [`Optimizer::load_checkpoint`] does.
    ///
    /// [`Optimizer::load_checkpoint`]: crate::Optimizer::load_checkpoint
    pub fn load_checkpoint_file(
        &mut self,
        path: impl AsRef<Path>,
        arena: Option<&crate::ParamArena>,
    ) -> Result<()> {
        let ck = Checkpoint::load_with_limit(path, max_file_bytes(self))?;
        self.load_checkpoint(&ck, arena)
    }
}

impl crate::CpuOptimizer {
    /// The optimizer's whole state as a [`Checkpoint`], with `params` (one slice per tensor,
    /// in arena order) when given. The same format as [`crate::Optimizer::save_checkpoint`].
    pub fn save_checkpoint<P: AsRef<[f32]>>(&self, params: Option<&[P]>) -> Result<Checkpoint> {
        let mut ck = export(self)?;
        if let Some(p) = params {
            add_params(&mut ck, self.tensor_infos(), p)?;
        }
        if let Some(st) = self.amp_state() {
            ck.set_metadata(GRAD_SCALER_KEY, grad_scaler_json(&st));
        }
        Ok(ck)
    }

    /// Installs a checkpoint as [`crate::Optimizer::load_checkpoint`] does; with `params`,
    /// the checkpoint's params are written into them (one vector per tensor, resized). On
    /// error nothing changes.
    pub fn load_checkpoint(
        &mut self,
        ck: &Checkpoint,
        params: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<()> {
        let want = params.is_some();
        let amp = match (ck.metadata(GRAD_SCALER_KEY), self.amp_state()) {
            (Some(s), Some(_)) => Some(parse_grad_scaler(s)?),
            _ => None,
        };
        let loaded = import(self, ck, want)?;
        if let Some(st) = amp {
            self.set_amp_state(st);
        }
        if let (Some(out), Some(p)) = (params, loaded) {
            *out = p;
        }
        Ok(())
    }
}

/// Metadata key of the AMP guard's state, under GradScaler's `state_dict` names.
const GRAD_SCALER_KEY: &str = "grad_scaler";

fn grad_scaler_json(st: &crate::AmpState) -> String {
    serde_json::json!({
        "scale": st.scale,
        "_growth_tracker": st.growth_tracker,
        "found_inf": st.found,
        "skipped": st.skipped,
    })
    .to_string()
}

fn parse_grad_scaler(s: &str) -> Result<crate::AmpState> {
    let v: Value =
        serde_json::from_str(s).map_err(|e| corrupt(format!("grad_scaler is not JSON: {e}")))?;
    let int = |k: &str| -> Result<u32> {
        v.get(k)
            .and_then(|x| x.as_u64())
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| corrupt(format!("grad_scaler.{k} is not a count")))
    };
    let scale = v
        .get("scale")
        .and_then(|x| x.as_f64())
        .map(|x| x as f32)
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| corrupt("grad_scaler.scale is not a positive number"))?;
    Ok(crate::AmpState {
        scale,
        growth_tracker: int("_growth_tracker")?,
        found: int("found_inf")?.min(1),
        skipped: int("skipped")?,
    })
}
