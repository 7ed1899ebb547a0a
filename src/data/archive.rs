//! tar and tar.gz archives of class folders, members `[prefix/]<class>/<image>`; of per-class
//! archives, members `[prefix/]<class>.tar` holding that class's images (the layout ImageNet's
//! `ILSVRC2012_img_train.tar` ships in, read as it is, without unpacking); or of loose images,
//! every member `<image>` at the top (unlabelled: for pre-training).
//!
//! An archive reads as the folder it unpacks to: the classes are the folders just below the
//! `prefix` all images share (images in a class folder's subfolders count for that class, as
//! with torchvision's `ImageFolder`), and the images come in the folder reader's order
//! (`ImageFolder`'s), whatever order the members were written in; its links are the images
//! they name. So a folder and its archive give the same store, and the same run.
use super::{is_image_name, Bytes, Encoded};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Lists the archive's images, keeping the encoded bytes of the first `memory` bytes' worth
/// of them; the others are `Bytes::Member`, which [`replay`] reads again as they are decoded.
pub(crate) fn read(path: &Path, memory: usize) -> Result<(Vec<Encoded>, Vec<String>)> {
    let mut found = Found::new(path, Pass::List { memory, later: 0 });
    found.members(tar::Archive::new(open(path)?), None)?;
    found.resolve_links()?;
    let Found { images, ignored, pass, .. } = found;
    if let Pass::List { later, .. } = pass {
        if later > 0 {
            eprintln!(
                "note: {}: {:.0} MiB of its images, past data.archive_memory_mib ({} MiB), are read again as they are decoded",
                path.display(),
                later as f64 / (1u64 << 20) as f64,
                memory >> 20
            );
        }
    }
    if images.is_empty() {
        return Err(Error::data(path, format!("archive holds no images ({})", super::image_kinds())));
    }
    if ignored > 0 {
        eprintln!("note: ignored {ignored} non-image member(s) of {}", path.display());
    }
    let (out, classes) = classify(path, images)?;
    if classes.is_empty() {
        eprintln!("note: {} holds no class folders: its {} images are unlabelled", path.display(), out.len());
    }
    Ok((out, classes))
}

/// The archive's bytes, through gzip for `.gz` and `.tgz`.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    Ok(if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    })
}

/// Reads the archive again, handing `send` the ordinal and the bytes of each image member
/// that [`read`] listed without its bytes (`Bytes::Member`) and `wanted` asks for, in the
/// archive's order. Stops early, without error, when `send` is refused (its reader is gone).
pub(crate) fn replay(
    path: &Path,
    wanted: &(dyn Fn(usize) -> bool + Sync),
    send: std::sync::mpsc::SyncSender<(usize, Vec<u8>)>,
) -> Result<()> {
    let mut found = Found::new(path, Pass::Replay { wanted, send });
    found.members(tar::Archive::new(open(path)?), None)
}

/// What a walk over the members does with each image: list it (keeping the bytes of the
/// first `memory` bytes' worth), or hand the bytes of the wanted ones on.
enum Pass<'a> {
    /// `later`: the bytes of the images left for the second pass.
    List {
        memory: usize,
        later: u64,
    },
    Replay {
        wanted: &'a (dyn Fn(usize) -> bool + Sync),
        send: std::sync::mpsc::SyncSender<(usize, Vec<u8>)>,
    },
}

/// An image read from the archive: its member name (`outer.tar/member` inside a per-class
/// archive) and where it sat, the folders of its path and its file name (inside a per-class
/// archive, its path there, and that archive's class as `inner_class`).
struct Member {
    image: Encoded,
    name: String,
    inner_class: Option<String>,
    dirs: Vec<String>,
    file: String,
}

/// Gives every image its class, and puts them in the folder reader's order: the classes sorted,
/// each class's images in `ImageFolder`'s order below the class folder. For images outside per-class
/// archives, the class folders are those just below the folders all images share
/// (`prefix/<class>/...`); when every image lies in one folder, that folder is the class, and
/// images at the top are loose (""). An image in the shared folder beside class folders is an
/// error, as it is in a folder.
fn classify(path: &Path, images: Vec<Member>) -> Result<(Vec<Encoded>, Vec<String>)> {
    let outer = || images.iter().filter(|m| m.inner_class.is_none()).map(|m| &m.dirs);
    // How many folders every outer image sits under: `prefix/`.
    let shared = outer().fold(None::<&[String]>, |shared, dirs| {
        let common = shared.map_or(dirs.len(), |s| s.iter().zip(dirs).take_while(|(a, b)| a == b).count());
        Some(&dirs[..common])
    });
    let shared = shared.map_or(0, <[String]>::len);
    // The class folders lie just below the shared folders; when every image lies in one
    // folder, that folder is the class (none for images at the top: loose).
    let one_folder = outer().all(|dirs| dirs.len() == shared);
    let depth = if one_folder { shared.checked_sub(1) } else { Some(shared) };
    // (class, `ImageFolder`'s order below the class folder, member), in member order.
    let mut keyed: Vec<(String, (String, String), Member)> = images
        .into_iter()
        .map(|m| {
            let (class, below) = match (&m.inner_class, depth.and_then(|d| Some((d, m.dirs.get(d)?)))) {
                (Some(class), _) => (class.clone(), &m.dirs[..]),
                (None, Some((d, class))) => (class.clone(), &m.dirs[d + 1..]),
                (None, None) => (String::new(), &[][..]),
            };
            let order = super::image_folder_order(&below.join("/"), &m.file);
            (class, order, m)
        })
        .collect();
    // Either every image is loose, or none is: an image beside class folders has no class.
    let loose = keyed.iter().filter(|(class, ..)| class.is_empty()).count();
    if loose > 0 && loose < keyed.len() {
        let first =
            |is_loose: bool| keyed.iter().find(|(class, ..)| class.is_empty() == is_loose).map(|(.., m)| &m.name);
        let (name, example) = (first(true).expect("a loose image"), first(false).expect("a class image"));
        return Err(Error::data(
            path,
            format!(
                "member {name:?} is a loose image beside class folders (as {example:?}): expected \
                 [prefix/]<class>/<image> (or <class>.tar) for every image, or <image> for every image"
            ),
        ));
    }
    // A stable sort: equal keys (one path twice in the archive) keep their member order.
    keyed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut classes: Vec<String> = keyed.iter().map(|(class, ..)| class.clone()).filter(|c| !c.is_empty()).collect();
    classes.dedup();
    let out = keyed.into_iter().map(|(class, _, m)| Encoded { class, ..m.image }).collect();
    Ok((out, classes))
}

/// The bytes of the member `name` of the archive at `path`, from its entry.
fn read_member<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path, name: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| Error::data(super::source_name(path, name), format!("cannot read member: {e}")))?;
    Ok(bytes)
}

/// `target` as a member path (`a/b.png`, without `.`, `..` or empty parts), read from the
/// folder `from` (a symbolic link's) or, with `from` empty, from the archive's top; None for
/// an absolute path or one that climbs out of the archive.
fn normalise(from: &[String], target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = from.iter().map(String::as_str).collect();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The images read so far from the archive at `path`, where each sat, and how many other
/// files it holds.
struct Found<'a> {
    path: &'a Path,
    pass: Pass<'a>,
    images: Vec<Member>,
    /// Hard and symbolic links among the images: the index of each in `images` (bytes still
    /// empty) and the member it names, resolved once the whole archive is read.
    links: Vec<(usize, String)>,
    /// How many image members the walk has met: the next one's ordinal.
    seen: usize,
    ignored: usize,
}

impl<'a> Found<'a> {
    fn new(path: &'a Path, pass: Pass<'a>) -> Found<'a> {
        Found { path, pass, images: Vec::new(), links: Vec::new(), seen: 0, ignored: 0 }
    }

    /// Gives each link the bytes of the image it names (through other links too), as
    /// unpacking the archive would. A link to nothing the archive holds is an error naming
    /// it, as a dangling link is in a folder.
    fn resolve_links(&mut self) -> Result<()> {
        if self.links.is_empty() {
            return Ok(());
        }
        let links: std::collections::HashMap<usize, &str> = self.links.iter().map(|(i, t)| (*i, t.as_str())).collect();
        let members: std::collections::HashMap<String, usize> = (self.images.iter().enumerate())
            .filter_map(|(i, m)| Some((normalise(&[], m.name.trim_start_matches('/'))?, i)))
            .collect();
        for &(at, _) in &self.links {
            let (mut i, mut hops) = (at, 0);
            while let Some(target) = links.get(&i) {
                let what = match normalise(&[], target).and_then(|t| members.get(&t)) {
                    Some(&next) if hops < 40 => {
                        (i, hops) = (next, hops + 1);
                        continue;
                    }
                    Some(_) => "one of a loop of links",
                    None => "which the archive does not hold as an image",
                };
                let name = &self.images[at].name;
                return Err(Error::data(self.path, format!("member {name:?} is a link to {target:?}, {what}")));
            }
            if i != at {
                self.images[at].image.bytes = match &self.images[i].image.bytes {
                    Bytes::Loaded(bytes) => Bytes::Loaded(bytes.clone()),
                    Bytes::Member(ordinal) => Bytes::Member(*ordinal),
                    Bytes::File(_) => unreachable!("an archive's images are its members"),
                };
            }
        }
        Ok(())
    }

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
            let kind = entry.header().entry_type();
            let link = kind.is_hard_link() || kind.is_symlink();
            if !kind.is_file() && !link {
                continue;
            }
            let member = entry.path().map_err(bad)?.to_string_lossy().to_string();
            let file_name = member.rsplit('/').next().unwrap_or("").to_string();
            // Hidden files and folders (macOS's `._*` and `.DS_Store`, `.git/`) are not the
            // data's, as the folder reader skips them.
            if member.split('/').any(|p| p.starts_with('.') && p != "." && p != "..") {
                continue;
            }
            if !link && inner.is_none() && file_name.to_ascii_lowercase().ends_with(".tar") {
                let class = file_name[..file_name.len() - 4].to_string();
                self.members(tar::Archive::new(Box::new(&mut entry)), Some((&member, &class)))?;
                continue;
            }
            if !is_image_name(&file_name) {
                self.ignored += 1;
                continue;
            }
            // Both passes meet the same image members in the same order: the ordinal names one.
            let ordinal = self.seen;
            self.seen += 1;
            let keep = match &mut self.pass {
                Pass::Replay { wanted, send } => {
                    if !link && wanted(ordinal) {
                        let bytes = read_member(&mut entry, path, &within(&member))?;
                        if send.send((ordinal, bytes)).is_err() {
                            return Ok(());
                        }
                    }
                    continue;
                }
                Pass::List { memory, later } => {
                    let keep = !link && entry.size() as usize <= *memory;
                    if keep {
                        *memory -= entry.size() as usize;
                    } else if !link {
                        *later += entry.size();
                    }
                    keep
                }
            };
            let mut parts: Vec<String> =
                member.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect();
            let file = parts.pop().unwrap_or_default();
            let name = within(&member);
            let mut bytes = Vec::new();
            if link {
                // Its bytes are the named member's: a hard link names it from the archive's
                // top (GNU tar writes a file's first path in full, the others as links to it),
                // a symbolic link from the link's own folder.
                let target = entry.link_name().map_err(bad)?.unwrap_or_default().to_string_lossy().to_string();
                let from = if kind.is_symlink() { &parts[..] } else { &[] };
                let target = match normalise(from, &target) {
                    Some(t) => within(&t),
                    None => format!("{target} (outside the archive)"),
                };
                self.links.push((self.images.len(), target));
            } else if keep {
                bytes = read_member(&mut entry, path, &name)?;
            }
            let image = Encoded {
                name: super::source_name(path, &name).display().to_string(),
                class: String::new(),
                bytes: if keep || link { Bytes::Loaded(bytes) } else { Bytes::Member(ordinal) },
            };
            let inner_class = inner.map(|(_, class)| class.to_string());
            self.images.push(Member { image, name, inner_class, dirs: parts, file });
        }
        Ok(())
    }
}
