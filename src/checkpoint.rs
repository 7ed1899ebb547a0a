//! Checkpoints: model weights, optimiser state and the run position, written atomically
//! (into a temporary folder, then renamed; the `latest` pointer is replaced by rename), so an
//! interrupted write never leaves a half checkpoint in use.
use crate::error::{Error, Result};
use crate::optim::Sgd;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// Where a run stands: the next step to take.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub global_step: usize,
    /// How many training images the run draws its batches from (0: not recorded, checkpoints
    /// before this field): a resume on other data would not continue the same run.
    #[serde(default)]
    pub train_images: usize,
    /// Seconds spent training (monitors and checkpoints included) by every invocation up to
    /// here, so that a resumed run's summary times the whole run (0 in checkpoints before
    /// this field).
    #[serde(default)]
    pub train_seconds: f64,
    /// [`crate::data::ImageStore::digest`] of the training data the run started on (0 in
    /// checkpoints before this field: not checked).
    #[serde(default)]
    pub train_digest: u64,
}

/// A training process's hold on its run folder: an advisory lock on `RUN/.lock` that the OS
/// drops when the process ends, however it ends (a crash or SIGKILL leaves no stale lock).
/// While one process trains a folder, a second `train` or `--resume` of it stops with an error
/// instead of appending to the same `metrics.jsonl` and overwriting its checkpoints.
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes the run folder's lock, or says which process holds it. Where the filesystem has no
/// locks, a note, and training goes on unguarded.
pub fn lock_run(run_dir: &Path) -> Result<RunLock> {
    use std::io::{Read, Seek, Write};
    let path = run_dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the error a second process gives.
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
                .map_err(|e| Error::io(&path, e))?;
            Ok(RunLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(Error::data(
                run_dir,
                format!(
                    "in use: another simsiam process (pid {}) is training this run folder; \
                     wait for it to end, or stop it (Ctrl-C or SIGTERM checkpoint first), then --resume",
                    pid.trim()
                ),
            ))
        }
        // A filesystem without locks (some network or FUSE mounts) must not stop training.
        Err(std::fs::TryLockError::Error(e)) => {
            eprintln!(
                "note: {}: cannot lock ({e}); a second process training this folder would go unnoticed",
                path.display()
            );
            Ok(RunLock { _file: file })
        }
    }
}

/// Whether a process trains `run_dir` now ([`lock_run`]'s lock is held), and its pid when it
/// wrote one. Probed with a shared lock taken and dropped at once; `None` where there is no
/// lock file or the filesystem has no locks.
pub fn lock_holder(run_dir: &Path) -> Option<Option<u32>> {
    use std::io::Read;
    let mut file = std::fs::File::open(run_dir.join(".lock")).ok()?;
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            Some(file.read_to_string(&mut pid).ok().and_then(|_| pid.trim().parse().ok()))
        }
        Ok(()) | Err(std::fs::TryLockError::Error(_)) => None,
    }
}

pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Replaces `path` with `bytes` atomically: written beside it, synced, then renamed over it, so
/// a reader (or a crash) sees the old file or the new one, never half of one. The temporary
/// file is this process's own, so processes writing the same file at once (an experiment's
/// workers filling one `data.cache_dir`) do not write into each other's.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    write_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// This process's temporary file beside `path`, to be renamed over it.
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Saves a checkpoint (and `extra` training state, e.g. a memory bank) and points `latest` at
/// it; keeps the newest `keep` (all when 0). Returns its folder.
pub fn save(
    run_dir: &Path,
    vs: &VarStore,
    opt: &Sgd,
    pos: Position,
    extra: &[(&str, &tch::Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    let root = dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:09}", pos.global_step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, &tch::Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&refs, &tmp.join("model.safetensors"))?;
    opt.save(&tmp.join("optim.safetensors"))?;
    if !extra.is_empty() {
        write_safetensors(extra, &tmp.join("state.safetensors"))?;
    }
    write_file(&tmp.join("position.json"), serde_json::to_string_pretty(&pos).expect("json").as_bytes())?;
    let final_dir = root.join(&name);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, keep)?;
    Ok(final_dir)
}

/// Writes named tensors as safetensors, in the standard contiguous layout whatever their
/// in-memory layout (channels-last weights, GPU tensors).
pub fn write_safetensors(named: &[(&str, &tch::Tensor)], path: &Path) -> Result<()> {
    let dense: Vec<(&str, tch::Tensor)> = named.iter().map(|(n, t)| (*n, t.contiguous())).collect();
    tch::Tensor::write_safetensors(&dense, path)?;
    // On disk before the rename that publishes it, as `write_file` does.
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// The `step-*` checkpoint folders under `root`, oldest first.
fn step_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    Ok(steps)
}

/// Also removes what a killed save left (`.tmp-step-*`): this save's own is renamed by now.
fn prune(root: &Path, keep: usize) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().starts_with(".tmp-step-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let mut steps = step_dirs(root)?;
    while keep > 0 && steps.len() > keep {
        let old = steps.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Every checkpoint folder of a run, oldest first.
pub fn all(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = dir(run_dir);
    if root.is_dir() {
        step_dirs(&root)
    } else {
        Ok(Vec::new())
    }
}

/// The folder `latest` points at, if any checkpoint was written.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir(run_dir).join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let d = dir(run_dir).join(name.trim());
    if !d.join("model.safetensors").is_file() {
        return Err(Error::data(&d, "checkpoint named by `latest` is missing model.safetensors"));
    }
    Ok(Some(d))
}

/// A run's checkpoint by name: `latest`, or one of its `step-*` folders (the newest
/// `run.keep_checkpoints` are kept). An error names the folders there are.
pub fn named(run_dir: &Path, name: &str) -> Result<PathBuf> {
    if name == "latest" {
        return latest(run_dir)?.ok_or_else(|| Error::data(run_dir, "no checkpoint yet"));
    }
    let c = dir(run_dir).join(name);
    if c.join("model.safetensors").is_file() && !name.contains('/') {
        return Ok(c);
    }
    let kept: Vec<String> =
        all(run_dir)?.iter().filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    Err(Error::config(format!(
        "--checkpoint: {name:?} is not a checkpoint of {} (expected latest or one of: {})",
        run_dir.display(),
        if kept.is_empty() { "none yet".to_string() } else { kept.join(", ") }
    )))
}

pub fn load_position(ckpt: &Path) -> Result<Position> {
    let p = ckpt.join("position.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(&p, format!("not a checkpoint position: {e}")))
}

/// Loads model weights into `vs`. On failure the message names the file and says which of
/// the two usual causes it is: a damaged file, or weights of another model (then the first
/// weight missing from the file or of another shape, which points at the config field).
pub fn load_model(vs: &mut VarStore, ckpt: &Path) -> Result<()> {
    let f = ckpt.join("model.safetensors");
    vs.load(&f).map_err(|e| Error::data(&f, why_not_loaded(vs, &f, &e)))
}

/// Why `vs.load(f)` failed with `e`. Only on the error path: it reads the file again.
fn why_not_loaded(vs: &VarStore, f: &Path, e: &tch::TchError) -> String {
    let saved: std::collections::HashMap<String, tch::Tensor> = match tch::Tensor::read_safetensors(f) {
        Ok(t) => t.into_iter().collect(),
        Err(read) => return format!("damaged or not a safetensors file (cut short by a full disk or a copy?): {read}"),
    };
    let mut names: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let other = "the checkpoint is of another model: does the run's config match the one it was trained with?";
    for (name, var) in names {
        match saved.get(&name) {
            None => return format!("{other} the file has no weight `{name}` (of shape {:?})", var.size()),
            Some(t) if t.size() != var.size() => {
                return format!("{other} `{name}` is {:?} in the file, {:?} in this model", t.size(), var.size())
            }
            Some(_) => {}
        }
    }
    format!("cannot load weights into this model: {e}")
}

/// The extra training state saved with a checkpoint (empty when there is none).
pub fn load_extra(ckpt: &Path) -> Result<std::collections::HashMap<String, tch::Tensor>> {
    let f = ckpt.join("state.safetensors");
    if !f.is_file() {
        return Ok(Default::default());
    }
    Ok(tch::Tensor::read_safetensors(&f)
        .map_err(|e| Error::data(&f, format!("cannot read: {e}")))?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Param, Sgd};

    /// A model of one weight `w` of `shape` (and, with `extra`, a `predictor.bias` [2]), and
    /// its optimiser.
    fn model(shape: &[i64], extra: bool) -> (VarStore, Sgd) {
        let vs = VarStore::new(tch::Device::Cpu);
        let w = vs.root().zeros("w", shape);
        if extra {
            let _ = (vs.root() / "predictor").zeros("bias", &[2]);
        }
        let opt = Sgd::new(vec![Param { name: "w".into(), tensor: w, group: 0 }], 1, 0.9, 0.0);
        (vs, opt)
    }

    /// A failed load says which cause it is: a damaged file, a missing weight, another shape.
    #[test]
    fn a_failed_load_names_its_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let (vs, opt) = model(&[3], false);
        save(tmp.path(), &vs, &opt, Position::default(), &[], 1).unwrap();
        let ckpt = latest(tmp.path()).unwrap().unwrap();
        let load_into = |shape: &[i64], extra: bool| load_model(&mut model(shape, extra).0, &ckpt);
        load_into(&[3], false).unwrap();
        let e = load_into(&[4], false).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("`w` is [3] in the file, [4] in this model"), "{e}");
        let e = load_into(&[3], true).unwrap_err().to_string();
        assert!(e.contains("has no weight `predictor.bias` (of shape [2])"), "{e}");
        let f = ckpt.join("model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_into(&[3], false).unwrap_err().to_string();
        assert!(e.contains("damaged or not a safetensors file"), "{e}");
    }

    /// Saves keep the newest `keep`, point `latest` at the newest, and clear what a killed save
    /// left behind.
    #[test]
    fn saves_keep_the_newest_and_clear_a_killed_save() {
        let tmp = tempfile::tempdir().unwrap();
        let (vs, opt) = model(&[3], false);
        let at = |global_step| Position { global_step, ..Position::default() };
        save(tmp.path(), &vs, &opt, at(1), &[], 2).unwrap();
        let stale = dir(tmp.path()).join(".tmp-step-000000007");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("model.safetensors"), b"half").unwrap();
        save(tmp.path(), &vs, &opt, at(2), &[], 2).unwrap();
        assert!(!stale.exists(), "a killed save's folder is removed");
        save(tmp.path(), &vs, &opt, at(3), &[], 2).unwrap();
        let names: Vec<String> =
            all(tmp.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["step-000000002", "step-000000003"]);
        assert_eq!(latest(tmp.path()).unwrap().unwrap(), dir(tmp.path()).join("step-000000003"));
        assert_eq!(load_position(&latest(tmp.path()).unwrap().unwrap()).unwrap(), at(3));
    }
}
