//! A folder of class folders: `root/<class>/<image>.{jpg,jpeg,png}`.
use super::{is_image_name, Encoded};
use crate::error::{Error, Result};
use std::path::Path;

pub(crate) fn read(root: &Path) -> Result<(Vec<Encoded>, Vec<String>)> {
    let mut class_dirs: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    class_dirs.sort_by_key(|e| e.file_name());
    if class_dirs.is_empty() {
        return Err(Error::data(
            root,
            "expected a folder of class folders (root/<class>/<image>.jpg), found no sub-folders",
        ));
    }
    let mut out = Vec::new();
    let mut classes = Vec::new();
    let mut ignored = 0usize;
    for dir in class_dirs {
        let class = dir.file_name().to_string_lossy().to_string();
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .map_err(|e| Error::io(dir.path(), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let before = out.len();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if !is_image_name(&name) {
                if !name.starts_with('.') {
                    ignored += 1;
                }
                continue;
            }
            let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
            out.push(Encoded { name: f.display().to_string(), class: class.clone(), bytes });
        }
        if out.len() == before {
            return Err(Error::data(dir.path(), "class folder has no .jpg, .jpeg or .png images"));
        }
        classes.push(class);
    }
    if ignored > 0 {
        eprintln!("note: ignored {ignored} non-image file(s) under {}", root.display());
    }
    Ok((out, classes))
}
