//! Taking a trained encoder elsewhere: the backbone in torchvision's parameter names and
//! layout, as safetensors or as `torch.save` writes it (which `model.init_from` reads back: see
//! `import`), and embeddings as `.npy`.
use crate::augment::Augmenter;
use crate::data::ImageStore;
use crate::error::{Error, Result};
use crate::model::SimSiam;
use crate::torch_save::Saved;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

const PREFIX: &str = "backbone.";

/// The backbone's state dict as torchvision names it: our VarStore already uses torchvision's
/// names under `backbone.`; BatchNorm layers also get the `num_batches_tracked` counter that
/// `load_state_dict(strict=True)` expects (0: it only matters with `momentum=None`).
pub fn torchvision_state(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix(PREFIX).map(|s| (s.to_string(), t.detach().to_device(Device::Cpu).contiguous()))
        })
        .collect();
    let counters: Vec<(String, Tensor)> = out
        .iter()
        .filter_map(|(n, _)| {
            n.strip_suffix(".running_var").map(|b| (format!("{b}.num_batches_tracked"), Tensor::from(0i64)))
        })
        .collect();
    out.extend(counters);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The file `simsiam export` writes the backbone to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportFormat {
    /// safetensors with torchvision's names (`.safetensors`).
    Safetensors,
    /// The same state dict as `torch.save` writes it (`.pth`, `.pt`, ...): `torch.load` then
    /// `load_state_dict`.
    TorchSave,
    /// As facebookresearch/simsiam's `main_simsiam.py` saves a checkpoint, for its
    /// `main_lincls.py --pretrained`: `{"epoch", "arch", "state_dict"}` with the backbone's
    /// entries under `module.encoder.` (the heads left out: linear evaluation drops them).
    Official { arch: String, epoch: usize },
}

impl ExportFormat {
    /// By the file's extension: `.safetensors`, or a `torch.save` file (`.pth`, `.pt`, `.tar`,
    /// `.bin`, `.ckpt`); `official` asks for the official code's checkpoint layout.
    pub fn for_path(path: &Path, official: Option<(String, usize)>) -> Result<ExportFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let torch = matches!(ext.as_str(), "pth" | "pt" | "tar" | "bin" | "ckpt");
        match (ext.as_str(), official) {
            ("safetensors", None) => Ok(ExportFormat::Safetensors),
            (_, None) if torch => Ok(ExportFormat::TorchSave),
            (_, Some((arch, epoch))) if torch => Ok(ExportFormat::Official { arch, epoch }),
            (_, Some(_)) => {
                Err(Error::data(path, "--official writes torch.save's format: name the file .pth or .pth.tar"))
            }
            _ => {
                Err(Error::data(path, "expected a .safetensors file, or a .pth / .pth.tar file (torch.save's format)"))
            }
        }
    }
}

/// Writes the backbone with torchvision's names in `format` (its folder made if needed), beside
/// the target then renamed over it, so that an existing file is replaced whole or not at all.
/// Returns how many tensors it wrote.
pub fn export_backbone(vs: &VarStore, path: &Path, format: &ExportFormat) -> Result<usize> {
    let state = torchvision_state(vs);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = crate::checkpoint::temp_beside(path);
    let dict = |prefix: &str| {
        Saved::Dict(state.iter().map(|(n, t)| (format!("{prefix}{n}"), Saved::Tensor(t.shallow_clone()))).collect())
    };
    let written = match format {
        ExportFormat::Safetensors => {
            let refs: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
            crate::checkpoint::write_safetensors(&refs, &tmp).map_err(|e| e.to_string())
        }
        ExportFormat::TorchSave => crate::torch_save::write(&tmp, &dict("")),
        ExportFormat::Official { arch, epoch } => crate::torch_save::write(
            &tmp,
            &Saved::Dict(vec![
                ("epoch".into(), Saved::Int(*epoch as i64)),
                ("arch".into(), Saved::Str(arch.clone())),
                ("state_dict".into(), dict("module.encoder.")),
            ]),
        ),
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::data(path, format!("cannot write: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(state.len())
}

/// Calls `f(y, z)` on each batch of `store`'s images in order, with eval-mode BN and no
/// augmentation: backbone features y `[b, C]` and projector outputs z `[b, d]`, float32 on the CPU.
fn for_each_embedding(
    model: &SimSiam,
    store: &ImageStore,
    aug: &Augmenter,
    batch: i64,
    mut f: impl FnMut(Tensor, Tensor) -> Result<()>,
) -> Result<()> {
    tch::no_grad(|| {
        for rows in store.batches(batch) {
            let x = aug.eval_view(&rows);
            // One forward pass, under the run's precision options as in training.
            let (y, z) = model.features_and_projection(&x, false);
            f(y.to_device(Device::Cpu), z.to_device(Device::Cpu))?;
        }
        Ok(())
    })
}

/// Embeddings of every image, in memory: backbone features y `[N, C]` and projector outputs z
/// `[N, d]`, float32 on the CPU (what [`write_embeddings`] streams to disk).
pub fn embed(model: &SimSiam, store: &ImageStore, aug: &Augmenter, batch: i64) -> (Tensor, Tensor) {
    let (mut ys, mut zs) = (Vec::new(), Vec::new());
    for_each_embedding(model, store, aug, batch, |y, z| {
        ys.push(y);
        zs.push(z);
        Ok(())
    })
    .expect("collecting cannot fail");
    (Tensor::cat(&ys, 0), Tensor::cat(&zs, 0))
}

/// A float32 `.npy` file written a batch of rows at a time, under a temporary name until
/// [`NpyRows::finish`] renames it into place (an interrupted run leaves no partial file).
/// The header is NPY format 1.0 (numpy's `format.py`): the magic string, the version, the
/// header's length (u16, little-endian) and a Python dict literal padded with spaces to a
/// multiple of 64 bytes and ended by a newline; then the values, little-endian, row-major.
struct NpyRows {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl NpyRows {
    fn create(path: std::path::PathBuf, shape: [i64; 2]) -> Result<NpyRows> {
        use std::io::Write;
        let tmp = crate::checkpoint::temp_beside(&path);
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(&npy_header("<f4", &shape)).map_err(|e| Error::io(&tmp, e))?;
        Ok(NpyRows { path, tmp, out })
    }

    /// Appends the rows of `t` (`[b, C]`, float32 on the CPU).
    fn push(&mut self, t: &Tensor) -> Result<()> {
        use std::io::Write;
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| Error::data(&self.path, e.to_string()))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out.write_all(&bytes).map_err(|e| Error::io(&self.tmp, e))
    }

    fn finish(self) -> Result<()> {
        let file = self.out.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

/// An NPY 1.0 header for a C-order array of `descr` (numpy's dtype string) and `shape`.
fn npy_header(descr: &str, shape: &[i64]) -> Vec<u8> {
    // As numpy writes it: "(10, 64)", and "(10,)" for one dimension.
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let comma = if shape.len() == 1 { "," } else { "" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}{comma}), }}");
    // magic (6) + version (2) + length (2) + dict + padding + newline: a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let len = dict.len() + unpadded.next_multiple_of(64) - unpadded + 1;
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend((len as u16).to_le_bytes());
    h.extend(dict.bytes());
    h.resize(10 + len - 1, b' ');
    h.push(b'\n');
    h
}

/// Embeds every image of `store` into `dir`: `backbone.npy` `[N, C]` and `projector.npy`
/// `[N, d]` (float32, streamed a batch at a time, so memory stays one batch whatever N),
/// `labels.npy` (int64; -1 for unlabelled images), `names.txt` and `classes.txt` (empty for
/// unlabelled data). Progress is shown as for decoding. Returns the two arrays' shapes.
pub fn write_embeddings(
    dir: &Path,
    model: &SimSiam,
    store: &ImageStore,
    aug: &Augmenter,
    batch: i64,
) -> Result<([i64; 2], [i64; 2])> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = store.images.size()[0];
    let progress = crate::progress::Progress::new(n as u64, "images embedded");
    let mut files: Option<(NpyRows, NpyRows, [i64; 2], [i64; 2])> = None;
    for_each_embedding(model, store, aug, batch, |y, z| {
        if files.is_none() {
            // The widths are the first batch's: [N, C] and [N, d].
            let (sy, sz) = ([n, y.size()[1]], [n, z.size()[1]]);
            files = Some((
                NpyRows::create(dir.join("backbone.npy"), sy)?,
                NpyRows::create(dir.join("projector.npy"), sz)?,
                sy,
                sz,
            ));
        }
        let (fy, fz, ..) = files.as_mut().expect("just made");
        fy.push(&y)?;
        fz.push(&z)?;
        progress.inc(y.size()[0] as u64);
        Ok(())
    })?;
    progress.finish_and_clear();
    let (fy, fz, sy, sz) = files.ok_or_else(|| Error::data(dir, "no images to embed"))?;
    fy.finish()?;
    fz.finish()?;
    let labels = store.labels.to_device(Device::Cpu);
    write_files(dir, &[("labels.npy", &labels)], &[("names.txt", &store.names), ("classes.txt", &store.classes)])?;
    Ok((sy, sz))
}

/// Each `(file name, tensor)` as `dir/name` in NPY format, and each `(file name, lines)` as a
/// text file of one item a line.
fn write_files(dir: &Path, npy: &[(&str, &Tensor)], text: &[(&str, &[String])]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, t) in npy {
        let p = dir.join(name);
        t.write_npy(&p).map_err(|e| Error::data(&p, format!("cannot write: {e}")))?;
    }
    for (name, items) in text {
        let p = dir.join(name);
        let body: String = items.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Rows of the preview grid at most (the `.npy` files hold every sampled image).
const PREVIEW_ROWS: i64 = 32;

/// A seeded sample of `n` images of `store` (all of them if it holds fewer) with two augmented
/// views each, as training draws them: `images.npy` (`[n, H, W, 3]` uint8), `views.npy`
/// (`[n, 2, 3, H, W]` float32, normalised as the network sees them), `labels.npy`, `names.txt`,
/// and `views.png`, one row per image (the image, view 1, view 2; the first 32). Returns how
/// many images were sampled. Why: to see what the augmentation does to one's own images, and
/// to compare it with another pipeline's on the same images.
pub fn write_views(dir: &Path, store: &ImageStore, aug: &Augmenter, n: usize, seed: u64) -> Result<usize> {
    if store.is_empty() || n == 0 {
        return Err(Error::config(format!("--views {n}: need at least one image (the dataset holds {})", store.len())));
    }
    let n = n.min(store.len());
    tch::manual_seed(seed as i64);
    let pick = Tensor::randperm(store.len() as i64, (Kind::Int64, Device::Cpu)).narrow(0, 0, n as i64);
    let images = store.images.index_select(0, &pick.to_device(store.images.device())).to_device(Device::Cpu);
    // Two views, each [n, 3, H, W] and normalised; stacked to [n, 2, 3, H, W].
    let views = aug.views(&images, 2);
    let (img, view) = (images.size()[1], views[0].size()[2]);
    let both = Tensor::stack(&[&views[0], &views[1]], 1).to_device(Device::Cpu).to_kind(Kind::Float);
    let labels = store.labels.to_device(Device::Cpu).index_select(0, &pick);
    let names: Vec<String> =
        Vec::<i64>::try_from(&pick).expect("indices").iter().map(|&i| store.names[i as usize].clone()).collect();
    write_files(
        dir,
        &[("images.npy", &images), ("views.npy", &both), ("labels.npy", &labels)],
        &[("names.txt", &names)],
    )?;

    // The grid, rows of (image | view 1 | view 2): the views back to pixels, x * std + mean,
    // [rows, H, W, 3] each (views smaller than the image padded black on the right and below),
    // side by side [rows, H, 3W, 3]; small images drawn at least 96 px tall, each pixel a block.
    let rows = (n as i64).min(PREVIEW_ROWS);
    let pixels = |v: &Tensor| {
        let x = aug.denormalize(&v.narrow(0, 0, rows).to_device(Device::Cpu)); // in [0, 1]
        let x = x.constant_pad_nd([0, img - view, 0, img - view]);
        (x * 255.0).round().to_kind(Kind::Uint8).permute([0, 2, 3, 1])
    };
    let grid = Tensor::cat(&[images.narrow(0, 0, rows), pixels(&views[0]), pixels(&views[1])], 2);
    let scale = (96 + img - 1) / img;
    let grid = grid.repeat_interleave_self_int(scale, Some(1), None).repeat_interleave_self_int(scale, Some(2), None);
    let (h, w) = (grid.size()[1], grid.size()[2]);
    let bytes = Vec::<u8>::try_from(grid.reshape([rows * h, w, 3]).flatten(0, -1)).expect("u8 pixels");
    let p = dir.join("views.png");
    image::save_buffer(&p, &bytes, w as u32, (rows * h) as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::data(&p, format!("cannot write: {e}")))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    /// Byte for byte what numpy 2 (`np.save`) writes before the values.
    #[test]
    fn npy_headers_are_numpys() {
        for (shape, dims) in [(&[10i64, 64][..], "(10, 64)"), (&[10][..], "(10,)")] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
            let mut want = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
            want.extend(format!("{dict:<117}\n").bytes());
            assert_eq!(super::npy_header("<f4", shape), want, "{dims}");
        }
    }
}
