//! tar and tar.gz archives of class folders, members `[prefix/]<class>/<image>`; of per-class
//! archives, members `[prefix/]<class>.tar` holding that class's images (the layout ImageNet's
//! `ILSVRC2012_img_train.tar` ships in, read as it is, without unpacking); or of loose images,
//! every member `<image>` at the top (unlabelled: for pre-training).
use super::{is_image_name, Bytes, Encoded};
use crate::error::{Error, Result};
use std::collections::BTreeSet;
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
    let mut found = Found { path, out: Vec::new(), classes: BTreeSet::new(), ignored: 0 };
    found.members(tar::Archive::new(reader), None)?;
    let Found { out, classes, ignored, .. } = found;
    if out.is_empty() {
        return Err(Error::data(path, format!("archive holds no images ({})", super::image_kinds())));
    }
    if ignored > 0 {
        eprintln!("note: ignored {ignored} non-image member(s) of {}", path.display());
    }
    if classes.contains("") {
        eprintln!("note: {} holds no class folders: its {} images are unlabelled", path.display(), out.len());
        return Ok((out, Vec::new()));
    }
    Ok((out, classes.into_iter().collect()))
}

/// The images read so far from the archive at `path`, their classes ("" for loose ones), and
/// how many other files it holds.
struct Found<'a> {
    path: &'a Path,
    out: Vec<Encoded>,
    classes: BTreeSet<String>,
    ignored: usize,
}

impl Found<'_> {
    /// Reads the members of `archive`: the outer archive (`inner: None`), or the per-class
    /// archive `inner = (its member name, its class)`, whose images all belong to that class.
    fn members(&mut self, mut archive: tar::Archive<Box<dyn Read + '_>>, inner: Option<(&str, &str)>) -> Result<()> {
        let path = self.path;
        let within = |member: &str| match inner {
            Some((outer, _)) => format!("{outer}/{member}"),
            None => member.to_string(),
        };
        let bad = |e: std::io::Error| match inner {
            Some((outer, _)) => Error::data(super::source_name(path, outer), format!("cannot read inner archive: {e}")),
            None => Error::data(path, format!("cannot read archive: {e}")),
        };
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = entry.path().map_err(bad)?.to_string_lossy().to_string();
            let file_name = member.rsplit('/').next().unwrap_or("").to_string();
            // Hidden files and folders (macOS's `._*` and `.DS_Store`, `.git/`) are not the
            // data's, as the folder reader skips them.
            if member.split('/').any(|p| p.starts_with('.') && p != "." && p != "..") {
                continue;
            }
            if inner.is_none() && file_name.to_ascii_lowercase().ends_with(".tar") {
                let class = file_name[..file_name.len() - 4].to_string();
                self.members(tar::Archive::new(Box::new(&mut entry)), Some((&member, &class)))?;
                continue;
            }
            if !is_image_name(&file_name) {
                self.ignored += 1;
                continue;
            }
            let parts: Vec<&str> = member.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
            let class = match inner {
                Some((_, class)) => class.to_string(),
                // A loose image (no class folder) has class "".
                None if parts.len() < 2 => String::new(),
                None => parts[parts.len() - 2].to_string(),
            };
            let name = within(&member);
            let loose = class.is_empty();
            // Either every image is loose, or none is.
            if self.classes.iter().any(|c| c.is_empty() != loose) {
                let (this, others) =
                    if loose { ("a loose image", "in class folders") } else { ("in a class folder", "loose") };
                return Err(Error::data(
                    path,
                    format!("member {name:?} is {this} but earlier images are {others}: expected <class>/<image> (or <class>.tar) for every image, or <image> for every image"),
                ));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| Error::data(super::source_name(path, &name), format!("cannot read member: {e}")))?;
            self.classes.insert(class.clone());
            self.out.push(Encoded {
                name: super::source_name(path, &name).display().to_string(),
                class,
                bytes: Bytes::Loaded(bytes),
            });
        }
        Ok(())
    }
}
