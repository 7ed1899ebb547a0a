//! tar and tar.gz archives of class folders, members `[prefix/]<class>/<image>`, or of loose
//! images, every member `<image>` at the top (unlabelled: for pre-training).
use super::{is_image_name, Bytes, Encoded};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

pub(crate) fn read(path: &Path) -> Result<(Vec<Encoded>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| Error::data(path, format!("cannot read archive: {e}"));
    let mut out = Vec::new();
    let mut classes = std::collections::BTreeSet::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(bad)?.to_string_lossy().to_string();
        let file_name = member.rsplit('/').next().unwrap_or("");
        if !is_image_name(file_name) || file_name.starts_with('.') {
            continue;
        }
        let parts: Vec<&str> = member.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        // A loose image (no class folder) has class "": then every image must be one.
        let loose = parts.len() < 2;
        if classes.iter().any(|c: &String| c.is_empty() != loose) {
            let (this, others) =
                if loose { ("a loose image", "in class folders") } else { ("in a class folder", "loose") };
            return Err(Error::data(
                path,
                format!("member {member:?} is {this} but earlier images are {others}: expected <class>/<image> for every image, or <image> for every image"),
            ));
        }
        let class = if loose { String::new() } else { parts[parts.len() - 2].to_string() };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::data(super::source_name(path, &member), format!("cannot read member: {e}")))?;
        classes.insert(class.clone());
        out.push(Encoded {
            name: super::source_name(path, &member).display().to_string(),
            class,
            bytes: Bytes::Loaded(bytes),
        });
    }
    if out.is_empty() {
        return Err(Error::data(path, format!("archive holds no images ({})", super::image_kinds())));
    }
    if classes.contains("") {
        eprintln!("note: {} holds no class folders: its {} images are unlabelled", path.display(), out.len());
        return Ok((out, Vec::new()));
    }
    Ok((out, classes.into_iter().collect()))
}
