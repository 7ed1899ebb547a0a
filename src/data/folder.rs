//! A folder of class folders, `root/<class>/<image>` (JPEG, PNG, WebP, BMP, TIFF), or of loose images,
//! `root/<image>` (unlabelled: for pre-training).
use super::{is_image_name, Bytes, Encoded};
use crate::error::{Error, Result};
use std::path::Path;

pub(crate) fn read(root: &Path) -> Result<(Vec<Encoded>, Vec<String>)> {
    let mut class_dirs: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    class_dirs.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    let mut ignored = 0usize;
    if class_dirs.is_empty() {
        // No class folders: the images themselves, unlabelled.
        read_images(root, "", &mut out, &mut ignored)?;
        if out.is_empty() {
            return Err(Error::data(
                root,
                "expected a folder of class folders (root/<class>/<image>.jpg) or of images (root/<image>.jpg), found neither",
            ));
        }
        eprintln!("note: {} holds no class folders: its {} images are unlabelled", root.display(), out.len());
    }
    let mut classes = Vec::new();
    for dir in class_dirs {
        let class = dir.file_name().to_string_lossy().to_string();
        let before = out.len();
        read_images(&dir.path(), &class, &mut out, &mut ignored)?;
        if out.len() == before {
            return Err(Error::data(dir.path(), format!("class folder has no images ({})", super::image_kinds())));
        }
        classes.push(class);
    }
    if ignored > 0 {
        eprintln!("note: ignored {ignored} non-image file(s) under {}", root.display());
    }
    Ok((out, classes))
}

/// Reads the images directly in `dir` (sorted by name) as `class`; counts other files.
fn read_images(dir: &Path, class: &str, out: &mut Vec<Encoded>, ignored: &mut usize) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if !is_image_name(&name) {
            if !name.starts_with('.') {
                *ignored += 1;
            }
            continue;
        }
        out.push(Encoded { name: f.display().to_string(), class: class.to_string(), bytes: Bytes::File(f) });
    }
    Ok(())
}
