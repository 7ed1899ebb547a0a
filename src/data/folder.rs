//! A folder of class folders, `root/<class>/<image>` (JPEG, PNG, WebP, BMP, TIFF, PPM/PGM; also in
//! subfolders of a class folder), or of loose images, `root/<image>` (unlabelled: for
//! pre-training).
use super::{is_image_name, Bytes, Encoded};
use crate::error::{Error, Result};
use std::path::Path;

pub(crate) fn read(root: &Path) -> Result<(Vec<Encoded>, Vec<String>)> {
    // The root's class folders and its own files, hidden ones passed over.
    let (mut class_dirs, mut top): (Vec<_>, Vec<_>) = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|p| p.is_dir() || p.is_file())
        .partition(|p| p.is_dir());
    class_dirs.sort();
    top.sort();
    let mut out = Vec::new();
    let mut ignored = 0usize;
    let mut classes = Vec::new();
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
    } else if let Some(image) = top.iter().find(|f| is_image_name(&f.to_string_lossy())) {
        // Beside class folders, an image at the top has no class: an error, as in an archive
        // (torchvision's `ImageFolder` passes over it silently).
        return Err(Error::data(
            image,
            "a loose image beside class folders: expected root/<class>/<image> for every image, or root/<image> for every image",
        ));
    } else {
        ignored += top.len();
    }
    for dir in class_dirs {
        let class = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        let before = out.len();
        read_images(&dir, &class, &mut out, &mut ignored)?;
        if out.len() == before {
            return Err(Error::data(dir, format!("class folder has no images ({})", super::image_kinds())));
        }
        classes.push(class);
    }
    if ignored > 0 {
        eprintln!("note: ignored {ignored} non-image file(s) under {}", root.display());
    }
    Ok((out, classes))
}

/// Reads the images under `dir`, in its subfolders too (as torchvision's `ImageFolder` does),
/// in `ImageFolder`'s order ([`super::image_folder_order`]), as `class`; counts other files.
/// Hidden files and folders are passed over.
fn read_images(dir: &Path, class: &str, out: &mut Vec<Encoded>, ignored: &mut usize) -> Result<()> {
    let hidden = |e: &walkdir::DirEntry| e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.');
    let walk = walkdir::WalkDir::new(dir).follow_links(true);
    let mut found = Vec::new();
    for entry in walk.into_iter().filter_entry(|e| !hidden(e)) {
        let entry = entry.map_err(|e| {
            let at = e.path().unwrap_or(dir).to_path_buf();
            match std::fs::read_link(&at) {
                Ok(target) if !at.exists() => {
                    Error::data(&at, format!("a link to {}, which does not exist", target.display()))
                }
                _ => Error::data(&at, format!("cannot list: {e}")),
            }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let file = entry.file_name().to_string_lossy().to_string();
        if !is_image_name(&file) {
            *ignored += 1;
            continue;
        }
        let f = entry.into_path();
        let folder = f.parent().and_then(|p| p.strip_prefix(dir).ok()).unwrap_or(Path::new(""));
        found.push((super::image_folder_order(&folder.to_string_lossy(), &file), f));
    }
    found.sort();
    out.extend(found.into_iter().map(|(_, f)| Encoded {
        name: f.display().to_string(),
        class: class.to_string(),
        bytes: Bytes::File(f),
    }));
    Ok(())
}
