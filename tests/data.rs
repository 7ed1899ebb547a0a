//! Readers on real files: the shared CIFAR-10 copy, a folder of mixed-size JPEG and PNG made
//! here, CIFAR binaries written here; and the bad inputs that must be clear errors.
mod common;
use simsiam::config::DataFormat;
use simsiam::data::{load, CifarKind, Split};
use std::path::Path;
use tch::{IndexOp, Kind};

#[test]
fn reads_shared_cifar10_test_archive() {
    let Some(dir) = common::shared_cifar() else {
        eprintln!("skipped: ../shared/data/cifar10-jpeg not present");
        return;
    };
    let s = load(&dir.join("test.tar.gz"), DataFormat::Auto, Split::Test, 32, false).unwrap();
    assert_eq!(s.len(), 10_000);
    assert_eq!(s.images.size(), vec![10_000, 32, 32, 3]);
    assert_eq!(s.images.kind(), Kind::Uint8);
    // Sorted class folders give CIFAR-10's label order.
    let want = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    assert_eq!(s.classes, want);
    // 1,000 test images per class.
    let counts = s.labels.bincount(None::<tch::Tensor>, 10);
    assert_eq!(Vec::<i64>::try_from(counts).unwrap(), vec![1000; 10]);
    // Real photographs: not constant, mean grey level in a plausible range.
    let mean = s.images.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((80.0..180.0).contains(&mean), "mean pixel {mean}");
    // Labels follow the member's class folder.
    let i = s.names.iter().position(|n| n.contains("/cat/")).unwrap();
    assert_eq!(s.labels.int64_value(&[i as i64]), 3);
    // Read in two passes, keeping none of the encoded images while listing them (what a load
    // does past `data.archive_memory_mib`, as with ImageNet's tar): the same store.
    let d = simsiam::config::DataConfig { archive_memory_mib: 0, ..Default::default() };
    let streamed = simsiam::data::open(&dir.join("test.tar.gz"), Split::Test, &d).unwrap();
    assert!(streamed.images.equal(&s.images) && streamed.labels.equal(&s.labels) && streamed.names == s.names);
}

#[test]
fn reads_folder_of_mixed_size_jpeg_and_png() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("dogs")).unwrap();
    std::fs::create_dir_all(root.join("cats")).unwrap();
    common::save_rgb(&root.join("cats/a.jpg"), 64, 48, 1);
    common::save_rgb(&root.join("cats/b.png"), 20, 30, 2);
    common::save_rgb(&root.join("dogs/c.PNG"), 16, 16, 3);
    // An exact-size PNG round-trips its pixels unchanged.
    let exact = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 7]));
    exact.save(root.join("dogs/d.png")).unwrap();
    std::fs::write(root.join("dogs/notes.txt"), "not an image").unwrap();
    // Images in a class folder's subfolders belong to that class (torchvision's ImageFolder);
    // hidden folders are passed over.
    std::fs::create_dir_all(root.join("cats/indoor")).unwrap();
    common::save_rgb(&root.join("cats/indoor/e.jpg"), 16, 16, 4);
    std::fs::create_dir_all(root.join("dogs/.thumbs")).unwrap();
    common::save_rgb(&root.join("dogs/.thumbs/f.jpg"), 16, 16, 5);
    let s = load(root, DataFormat::Auto, Split::Train, 16, false).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s.classes, ["cats", "dogs"]);
    assert_eq!(Vec::<i64>::try_from(&s.labels).unwrap(), vec![0, 0, 0, 1, 1]);
    assert!(s.names[1].ends_with("cats/b.png") && s.names[2].ends_with("cats/indoor/e.jpg"), "{:?}", s.names);
    assert_eq!(s.images.size(), vec![5, 16, 16, 3]);
    let d = s.images.i(4);
    assert_eq!(d.int64_value(&[2, 5, 0]), 50);
    assert_eq!(d.int64_value(&[2, 5, 1]), 20);
    assert_eq!(d.int64_value(&[2, 5, 2]), 7);
}

#[test]
fn reads_cifar10_and_cifar100_binaries_written_here() {
    let tmp = tempfile::tempdir().unwrap();
    let f10 = tmp.path().join("batch.bin");
    common::write_cifar(&f10, CifarKind::Cifar10, 30, 10);
    let s = load(&f10, DataFormat::Auto, Split::Train, 32, false).unwrap();
    assert_eq!(s.len(), 30);
    assert_eq!(s.num_classes(), 10);
    assert_eq!(s.labels.int64_value(&[13]), 3);
    // Pixel layout: planar CHW in the file, HWC in the store.
    let raw = std::fs::read(&f10).unwrap();
    let rec = &raw[3073 * 5..3073 * 6];
    let img = s.images.i(5);
    assert_eq!(img.int64_value(&[0, 1, 0]), rec[1 + 1] as i64);
    assert_eq!(img.int64_value(&[0, 1, 1]), rec[1 + 1024 + 1] as i64);
    assert_eq!(img.int64_value(&[2, 0, 2]), rec[1 + 2048 + 64] as i64);

    // A CIFAR-100 folder with train.bin/test.bin picks the file by split.
    let d100 = tmp.path().join("c100");
    std::fs::create_dir_all(&d100).unwrap();
    common::write_cifar(&d100.join("train.bin"), CifarKind::Cifar100, 12, 100);
    common::write_cifar(&d100.join("test.bin"), CifarKind::Cifar100, 5, 100);
    let tr = load(&d100, DataFormat::Auto, Split::Train, 32, false).unwrap();
    let te = load(&d100, DataFormat::Auto, Split::Test, 32, false).unwrap();
    assert_eq!((tr.len(), te.len(), tr.num_classes()), (12, 5, 100));
    assert_eq!(tr.labels.int64_value(&[11]), 11);
}

#[test]
fn reads_plain_tar_of_class_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for (c, n) in [("a", 2), ("b", 3)] {
        std::fs::create_dir_all(src.join("imgs").join(c)).unwrap();
        for i in 0..n {
            common::save_rgb(&src.join(format!("imgs/{c}/{i}.png")), 8, 8, i);
        }
    }
    let tar_path = tmp.path().join("x.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    b.append_dir_all("imgs", src.join("imgs")).unwrap();
    b.finish().unwrap();
    drop(b);
    let s = load(&tar_path, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s.classes, ["a", "b"]);
}

fn err_text(path: &Path, size: usize, skip: bool) -> String {
    load(path, DataFormat::Auto, Split::Train, size, skip).unwrap_err().to_string()
}

#[test]
fn truncated_jpeg_is_an_error_naming_the_file_or_skipped_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("c")).unwrap();
    std::fs::create_dir_all(root.join("d")).unwrap();
    common::save_rgb(&root.join("c/a_good.png"), 8, 8, 1);
    common::save_rgb(&root.join("c/bad.jpg"), 32, 32, 2);
    common::save_rgb(&root.join("d/z_good.png"), 8, 8, 3);
    let bytes = std::fs::read(root.join("c/bad.jpg")).unwrap();
    std::fs::write(root.join("c/bad.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(root, 8, false);
    assert!(e.contains("bad.jpg") && e.contains("truncated"), "{e}");
    let s = load(root, DataFormat::Auto, Split::Train, 8, true).unwrap();
    assert_eq!((s.len(), s.skipped), (2, 1));
    // The readable images keep their own pixels, names and labels (the rows after the
    // skipped one move up).
    assert!(s.names[0].ends_with("a_good.png") && s.names[1].ends_with("z_good.png"), "{:?}", s.names);
    assert_eq!(Vec::<i64>::try_from(&s.labels).unwrap(), vec![0, 1]);
    for (row, seed) in [(0, 1), (1, 3)] {
        let want = tch::Tensor::from_slice(&common::bytes(8 * 8 * 3, seed)).view([8, 8, 3]);
        assert!(s.images.i(row).equal(&want), "row {row}");
    }
    // All unreadable: an error, not an empty store.
    std::fs::remove_file(root.join("c/a_good.png")).unwrap();
    std::fs::remove_file(root.join("d/z_good.png")).unwrap();
    std::fs::remove_dir(root.join("d")).unwrap();
    let e = err_text(root, 8, true);
    assert!(e.contains("no readable images"), "{e}");
}

/// A JPEG is complete when its image data end, wherever the file ends: data appended after
/// the end marker (phones append metadata and videos) are read as PIL reads them, and a file
/// cut inside its image data is refused even when a thumbnail before the data holds an end
/// marker of its own.
#[test]
fn jpegs_with_trailing_data_load_and_cut_ones_with_thumbnails_do_not() {
    use simsiam::data::decode_to_square;
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = |name: &str, side: u32, seed: u64| {
        let path = tmp.path().join(name);
        common::save_rgb(&path, side, side, seed);
        std::fs::read(path).unwrap()
    };
    let photo = jpeg("photo.jpg", 32, 1);
    let want = decode_to_square(&photo, 16).unwrap();
    let mut trailing = photo.clone();
    trailing.extend(b"MotionPhoto_Data".iter().chain(&[0u8; 4096]));
    assert_eq!(decode_to_square(&trailing, 16).unwrap(), want, "data after the end are ignored");
    // An APP1 segment holding a whole JPEG (an EXIF thumbnail), then the photo's own segments.
    let thumb = jpeg("thumb.jpg", 8, 2);
    let mut with_thumb = vec![0xFF, 0xD8, 0xFF, 0xE1];
    with_thumb.extend(((2 + 6 + thumb.len()) as u16).to_be_bytes());
    with_thumb.extend(b"Exif\0\0".iter().chain(&thumb).chain(&photo[2..]));
    assert_eq!(decode_to_square(&with_thumb, 16).unwrap(), want, "the thumbnail is stepped over");
    let cut = &with_thumb[..with_thumb.len() - photo.len() / 3];
    match decode_to_square(cut, 16) {
        Ok(_) => panic!("a cut file whose thumbnail ends was read"),
        Err(e) => assert!(e.contains("truncated JPEG"), "{e}"),
    }
}

/// Hidden files and folders (macOS's `._*` companions and `.DS_Store`, a `.cache/` folder)
/// are skipped alike by the folder reader and in an archive of that folder.
#[test]
fn hidden_files_and_folders_are_skipped_in_folders_and_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    for (dir, file) in [("a", "1.png"), ("b", "2.png"), (".cache", "3.png"), ("b/.thumbs", "4.png")] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        common::save_rgb(&root.join(dir).join(file), 8, 8, 1);
    }
    std::fs::write(root.join("a/._1.png"), b"\x00\x05\x16\x07 AppleDouble").unwrap();
    std::fs::write(root.join(".DS_Store"), b"Bud1").unwrap();
    let archive = tmp.path().join("data.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &root).unwrap();
    b.finish().unwrap();
    drop(b);
    for path in [&root, &archive] {
        let s = load(path, DataFormat::Auto, Split::Train, 8, false).unwrap();
        assert_eq!(s.classes, ["a", "b"], "{}", path.display());
        assert_eq!(s.len(), 2, "{}: {:?}", path.display(), s.names);
    }
}

/// Damaged files (bytes changed, cut, inserted) give errors or pixels, never a panic, in every
/// format the readers take: one such file must not take down a decode of a million.
#[test]
fn damaged_images_are_errors_not_panics() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut errors = 0;
    for ext in ["jpg", "png", "webp", "bmp", "tiff", "ppm", "pgm"] {
        let path = tmp.path().join(format!("x.{ext}"));
        if ext == "pgm" {
            image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * 6 + y) as u8])).save(&path).unwrap();
        } else {
            common::save_rgb(&path, 40, 30, 1);
        }
        let intact = std::fs::read(&path).unwrap();
        assert!(simsiam::data::decode_to_square(&intact, 32).is_ok(), "{ext}");
        for i in 0..600 {
            let mut b = intact.clone();
            match i % 3 {
                0 => (0..rng.gen_range(1..8)).for_each(|_| {
                    let k = rng.gen_range(0..b.len());
                    b[k] = rng.gen();
                }),
                1 => b.truncate(rng.gen_range(1..b.len())),
                _ => {
                    let k = rng.gen_range(0..b.len());
                    (0..rng.gen_range(1..50)).for_each(|_| b.insert(k, rng.gen()));
                }
            }
            let decoded = std::panic::catch_unwind(|| simsiam::data::decode_to_square(&b, 32));
            match decoded {
                Ok(Ok(px)) => assert_eq!(px.len(), 32 * 32 * 3, "{ext}, damage {i}"),
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("{ext}, damage {i}: the decoder panicked"),
            }
        }
    }
    assert!(errors > 1000, "most damage is found: {errors} errors of 4200");
}

/// `data.store`: on the CPU the host and the device are one memory, so every placement keeps
/// the store as it is, and a gather is the rows asked for.
#[test]
fn a_placed_store_gathers_the_rows_asked_for() {
    use simsiam::config::StorePlace;
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..5 {
        common::save_rgb(&tmp.path().join(format!("img{i}.png")), 8, 8, 10 + i);
    }
    let s = load(tmp.path(), DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.bytes(), 5 * 8 * 8 * 3);
    let idx = tch::Tensor::from_slice(&[4i64, 0, 2]);
    for place in [StorePlace::Auto, StorePlace::Device, StorePlace::Host] {
        let p = s.place(tch::Device::Cpu, place).unwrap();
        assert!(!p.on_host_for(tch::Device::Cpu));
        assert!(p.gather(&idx, tch::Device::Cpu).equal(&s.images.index_select(0, &idx)), "{place:?}");
        assert_eq!(p.names, s.names);
    }
}

/// An archive of per-class archives (ImageNet's `ILSVRC2012_img_train.tar`: `<wnid>.tar`, each
/// of that class's loose images) reads as the folder it unpacks to, pixel for pixel; loose
/// images beside the inner archives are an error naming the member.
#[test]
fn reads_an_archive_of_per_class_archives_as_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    let outer = tmp.path().join("train.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&outer).unwrap());
    for (c, n) in [("n01", 2u64), ("n02", 3)] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        let inner = tmp.path().join(format!("{c}.tar"));
        let mut ib = tar::Builder::new(std::fs::File::create(&inner).unwrap());
        for i in 0..n {
            let img = folder.join(format!("{c}/{c}_{i}.png"));
            common::save_rgb(&img, 8 + i as u32, 8, 10 * n + i);
            ib.append_path_with_name(&img, format!("{c}_{i}.png")).unwrap();
        }
        ib.into_inner().unwrap();
        b.append_path_with_name(&inner, format!("{c}.tar")).unwrap();
    }
    b.into_inner().unwrap();
    let s = load(&outer, DataFormat::Auto, Split::Train, 8, false).unwrap();
    let f = load(&folder, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.classes, ["n01", "n02"]);
    assert_eq!(Vec::<i64>::try_from(&s.labels).unwrap(), vec![0, 0, 1, 1, 1]);
    assert!(s.images.equal(&f.images), "the archive's pixels differ from the folder's");
    assert!(s.names[2].ends_with("train.tar:n02.tar/n02_0.png"), "{:?}", s.names);
    // A loose image beside the per-class archives.
    let mut b = tar::Builder::new(std::fs::File::create(&outer).unwrap());
    b.append_path_with_name(tmp.path().join("n01.tar"), "n01.tar").unwrap();
    b.append_path_with_name(folder.join("n02/n02_0.png"), "stray.png").unwrap();
    b.into_inner().unwrap();
    let e = err_text(&outer, 8, false);
    assert!(e.contains("stray.png") && e.contains("loose"), "{e}");
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("full")).unwrap();
    std::fs::create_dir_all(tmp.path().join("empty_one")).unwrap();
    common::save_rgb(&tmp.path().join("full/a.png"), 8, 8, 1);
    let e = err_text(tmp.path(), 8, false);
    assert!(e.contains("empty_one") && e.contains("no images (.jpg"), "{e}");
}

#[test]
fn wrong_size_cifar_file_is_an_error_with_the_expected_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("data_batch_x.bin");
    std::fs::write(&f, vec![0u8; 3073 * 2 + 5]).unwrap();
    let e = err_text(&f, 32, false);
    assert!(e.contains("data_batch_x.bin") && e.contains("3073") && e.contains("3074"), "{e}");
}

#[test]
fn missing_path_is_an_error() {
    let e = err_text(Path::new("/nonexistent/cifar"), 32, false);
    assert!(e.contains("/nonexistent/cifar") && e.contains("no such"), "{e}");
}

/// Unlabelled data for pre-training: a folder or an archive of loose images has no classes
/// (labels -1); an archive mixing loose images and class folders is an error naming a member.
#[test]
fn loose_images_are_unlabelled_and_mixing_them_with_class_folders_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("loose");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..3 {
        common::save_rgb(&root.join(format!("{i}.png")), 8, 8, i);
    }
    let s = load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.len(), 3);
    assert!(!s.labelled() && s.classes.is_empty());
    assert_eq!(Vec::<i64>::try_from(&s.labels).unwrap(), vec![-1; 3]);

    let tar_of = |name: &str, members: &[&str]| {
        let path = tmp.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for m in members {
            b.append_path_with_name(root.join("0.png"), m).unwrap();
        }
        b.finish().unwrap();
        path
    };
    let flat = tar_of("flat.tar", &["a.png", "b.png"]);
    let s = load(&flat, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!((s.len(), s.labelled()), (2, false));
    let mixed = tar_of("mixed.tar", &["cats/a.png", "b.png"]);
    let e = err_text(&mixed, 8, false);
    assert!(e.contains("mixed.tar") && e.contains("\"b.png\"") && e.contains("<class>/<image>"), "{e}");
    // A folder with neither class folders nor images says what it expected.
    std::fs::create_dir_all(tmp.path().join("nothing")).unwrap();
    let e = err_text(&tmp.path().join("nothing"), 8, false);
    assert!(e.contains("class folders") && e.contains("found neither"), "{e}");
}

/// Held-out labels are re-indexed by the training data's class names: a test folder lacking a
/// class keeps each image's class; one with a class the training data lacks is an error.
#[test]
fn held_out_labels_follow_the_training_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = |name: &str, classes: &[&str]| {
        let root = tmp.path().join(name);
        for (i, c) in classes.iter().enumerate() {
            std::fs::create_dir_all(root.join(c)).unwrap();
            common::save_rgb(&root.join(c).join("x.png"), 8, 8, i as u64);
        }
        load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap()
    };
    let train = folder("train", &["ant", "bee", "cat"]);
    let test = folder("test", &["bee", "cat"]);
    assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), vec![0, 1], "indices of its own two classes");
    let test = test.aligned_to(&train, "test vs train").unwrap();
    assert_eq!(test.classes, ["ant", "bee", "cat"]);
    assert_eq!(
        Vec::<i64>::try_from(&test.labels).unwrap(),
        vec![1, 2],
        "bee and cat, as the training data counts them"
    );
    let other = folder("other", &["bee", "dog"]);
    let e = other.aligned_to(&train, "test vs train").unwrap_err().to_string();
    assert!(e.contains("test vs train") && e.contains("dog") && !e.contains("bee\""), "{e}");
}

/// WebP, BMP, TIFF, PPM and PGM files (torchvision's `ImageFolder` extensions) are read;
/// pixels of an exact-size lossless file come back unchanged, a grey one's in every channel.
#[test]
fn reads_webp_bmp_tiff_ppm_and_pgm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("c")).unwrap();
    let exact = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 99]));
    for ext in ["webp", "bmp", "TIFF", "ppm"] {
        exact.save(root.join(format!("c/x.{}", ext.to_lowercase()))).unwrap();
        std::fs::rename(root.join(format!("c/x.{}", ext.to_lowercase())), root.join(format!("c/x.{ext}"))).unwrap();
    }
    let grey = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([x as u8 * 30 + y as u8]));
    grey.save(root.join("c/y.pgm")).unwrap();
    let s = load(root, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.len(), 5);
    for i in 0..4 {
        let img = s.images.i(i);
        assert_eq!(
            (img.int64_value(&[2, 5, 0]), img.int64_value(&[2, 5, 1]), img.int64_value(&[2, 5, 2])),
            (150, 60, 99),
            "{}",
            s.names[i as usize]
        );
    }
    let y = s.images.i(4);
    assert!(s.names[4].ends_with("y.pgm"));
    assert_eq!((y.int64_value(&[2, 5, 0]), y.int64_value(&[2, 5, 1]), y.int64_value(&[2, 5, 2])), (152, 152, 152));
}

/// Each colour mode and format decodes to what PIL's `convert("RGB")` gives, torchvision's
/// `ImageFolder` loader (`tests/fixtures/colour/`, `scripts/reference/colour_fixture.py`):
/// exactly, but for JPEGs, whose decoders (libjpeg-turbo's and the image crate's) round the
/// inverse DCT and upsample chroma a little differently. A JPEG's EXIF orientation is not applied, as PIL's
/// loader does not apply it: rotated, the image would be far off.
#[test]
fn colours_are_pils_in_every_mode_and_format() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/colour");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let pil_path = entry.unwrap().path();
        let Some(file) = pil_path.file_name().unwrap().to_str().unwrap().strip_suffix(".pil.rgb").map(str::to_string)
        else {
            continue;
        };
        let ours = simsiam::data::decode_to_square(&std::fs::read(dir.join(&file)).unwrap(), 24).unwrap();
        let pil = std::fs::read(&pil_path).unwrap();
        let diff: Vec<i32> = ours.iter().zip(&pil).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let (mean, max) = (diff.iter().sum::<i32>() as f64 / diff.len() as f64, *diff.iter().max().unwrap());
        eprintln!("{file}: mean |difference| {mean:.3}, max {max}");
        let (mean_at_most, max_at_most) = if file.ends_with(".jpg") { (1.0, 4) } else { (0.0, 0) };
        assert!(
            ours.len() == pil.len() && mean <= mean_at_most && max <= max_at_most,
            "{file}: mean |difference| {mean:.3}, max {max} against PIL's"
        );
        checked += 1;
    }
    assert_eq!(checked, 19, "fixtures in {}", dir.display());
}

/// 16-bit PNGs give each sample's high byte, as PIL reads 16-bit RGB and RGBA PNGs (Pillow
/// 13.0, checked here: `convert("RGB")` equals v >> 8 on random samples); the image crate's own
/// conversion rounds v / 257, one level higher for a quarter of the samples. 16-bit grey is cut
/// the same way (PIL clips it at 255 instead: nearly white).
#[test]
fn sixteen_bit_pngs_keep_the_high_byte_as_pil_does() {
    use simsiam::data::decode_to_square;
    let v = |x: u32, y: u32, c: u32| (x * 7919 + y * 104_729 + c * 15_485_863) as u16 | 0x80;
    let rgb = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(8, 8, |x, y| {
        image::Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)])
    });
    let rgba = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(8, 8, |x, y| {
        image::Rgba([v(x, y, 0), v(x, y, 1), v(x, y, 2), v(x, y, 3)])
    });
    let grey = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(8, 8, |x, y| image::Luma([v(x, y, 0)]));
    let png = |img: image::DynamicImage| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        decode_to_square(bytes.get_ref(), 8).unwrap()
    };
    let high = |x: u32, y: u32, c: u32| (v(x, y, c) >> 8) as u8;
    let want: Vec<u8> = (0..8).flat_map(|y| (0..8).flat_map(move |x| (0..3).map(move |c| high(x, y, c)))).collect();
    assert_eq!(png(rgb.into()), want);
    assert_eq!(png(rgba.into()), want);
    let want: Vec<u8> = (0..8).flat_map(|y| (0..8).flat_map(move |x| [high(x, y, 0); 3])).collect();
    assert_eq!(png(grey.into()), want);
}

/// An experiment's arms share one decode (`train::SharedStores`): a second run with the same data
/// fields and seed reuses the stores and trains exactly as a run that decoded its own; a change
/// to a data field decodes again.
#[test]
fn runs_sharing_stores_decode_once_and_train_the_same() {
    use simsiam::config::Config;
    use simsiam::train::{train, RunControl, SharedStores};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.bin");
    common::write_cifar(&data, CifarKind::Cifar10, 256, 10);
    let cfg = |name: &str, extra: &[&str]| {
        let mut sets: Vec<String> = [
            format!("data.train={:?}", data.display().to_string()),
            format!("run.out_dir={:?}", tmp.path().join(name).display().to_string()),
            "run.device=\"cpu\"".into(),
            "run.epochs=1".into(),
            "model.width=4".into(),
            "model.dim=32".into(),
            "model.proj_hidden=32".into(),
            "model.pred_hidden=8".into(),
            "monitor.knn_at_init=false".into(),
            "data.train_limit=0".into(),
        ]
        .into();
        sets.extend(extra.iter().map(|s| s.to_string()));
        Config::resolve("tiny", None, &sets).unwrap()
    };
    let cache = std::sync::Arc::new(SharedStores::default());
    let shared = RunControl { data: Some(cache.clone()), ..Default::default() };
    let first = train(&cfg("a", &[]), &shared).unwrap();
    let second = train(&cfg("b", &[]), &shared).unwrap();
    assert_eq!(cache.decodes(), 1);
    let alone = train(&cfg("c", &[]), &RunControl::default()).unwrap();
    assert_eq!((first.final_loss, second.final_loss), (alone.final_loss, alone.final_loss));
    let fewer = train(&cfg("d", &["data.train_limit=128"]), &shared).unwrap();
    assert_eq!(cache.decodes(), 2);
    assert_eq!(fewer.steps, 128 / 64);
}

/// `data.cache_dir`: the first load decodes into the cache, later loads map the cached pixels
/// (shown by a byte changed in the cache file coming back), a change to the source makes a
/// new entry, a damaged entry is decoded again, and stores with skipped images cache their
/// readable rows.
#[test]
fn the_disk_cache_maps_decoded_stores_and_follows_changes_to_the_source() {
    use simsiam::config::DataConfig;
    use simsiam::data::open;
    let tmp = tempfile::tempdir().unwrap();
    let (root, cache) = (tmp.path().join("images"), tmp.path().join("cache"));
    for (class, seed) in [("a", 1), ("a", 2), ("b", 3)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        common::save_rgb(&root.join(format!("{class}/{seed}.png")), 8, 8, seed);
    }
    let d = DataConfig { image_size: 8, cache_dir: Some(cache.clone()), ..Default::default() };
    let plain = load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap();
    let first = open(&root, Split::Train, &d).unwrap();
    let same = |s: &simsiam::data::ImageStore, want: &simsiam::data::ImageStore| {
        assert!(s.images.equal(&want.images));
        assert!(s.labels.equal(&want.labels));
        assert_eq!((&s.names, &s.classes, s.skipped), (&want.names, &want.classes, want.skipped));
    };
    same(&first, &plain);
    let files = |ext: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        v.sort();
        v
    };
    let pixels = files(".u8");
    assert_eq!((pixels.len(), files(".json").len()), (1, 1));
    assert_eq!(std::fs::metadata(&pixels[0]).unwrap().len(), 3 * 8 * 8 * 3);
    // The pixels are as readable as the header (libtorch alone would make them owner-only):
    // a cache folder shared by several users serves them all.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pixels[0]), mode(&files(".json")[0]), "the pixels' permissions are the header's");
    // The second load reads the cache: a byte changed there comes back.
    let mut raw = std::fs::read(&pixels[0]).unwrap();
    raw[0] = raw[0].wrapping_add(1);
    std::fs::write(&pixels[0], &raw).unwrap();
    let second = open(&root, Split::Train, &d).unwrap();
    assert_eq!(second.images.int64_value(&[0, 0, 0, 0]), (raw[0]) as i64);
    assert_eq!(second.names, plain.names);
    // A damaged entry (pixels cut short) is decoded again, and repaired.
    std::fs::write(&pixels[0], &raw[..100]).unwrap();
    same(&open(&root, Split::Train, &d).unwrap(), &plain);
    same(&open(&root, Split::Train, &d).unwrap(), &plain);
    // A new image in a class folder is a new source: decoded, with the new image.
    common::save_rgb(&root.join("b/4.png"), 8, 8, 4);
    let grown = open(&root, Split::Train, &d).unwrap();
    assert_eq!(grown.len(), 4);
    same(&grown, &load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap());
    assert_eq!(files(".u8").len(), 2);
    // So is an image rewritten in a class folder's subfolder (same size, new pixels).
    std::fs::create_dir_all(root.join("b/more")).unwrap();
    common::save_rgb(&root.join("b/more/5.png"), 8, 8, 5);
    assert_eq!(open(&root, Split::Train, &d).unwrap().len(), 5);
    std::thread::sleep(std::time::Duration::from_millis(20));
    common::save_rgb(&root.join("b/more/5.png"), 8, 8, 6);
    same(&open(&root, Split::Train, &d).unwrap(), &load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap());
    assert_eq!(files(".u8").len(), 4);
    std::fs::remove_dir_all(root.join("b/more")).unwrap();
    // Skipped images: the readable rows are what is cached, and read back.
    std::fs::write(root.join("a/bad.png"), b"not a png").unwrap();
    let e = open(&root, Split::Train, &d).unwrap_err().to_string();
    assert!(e.contains("bad.png"), "{e}");
    assert!(files(".tmp").is_empty(), "a failed decode leaves no temporary file");
    let d = DataConfig { skip_corrupt: true, ..d };
    let skipping = open(&root, Split::Train, &d).unwrap();
    assert_eq!((skipping.len(), skipping.skipped), (4, 1));
    same(&skipping, &load(&root, DataFormat::Auto, Split::Train, 8, true).unwrap());
    same(&open(&root, Split::Train, &d).unwrap(), &skipping);
    assert!(files(".tmp").is_empty(), "no temporary files left");
}

/// A decoded store knows its sources' shorter sides (through the disk cache too), and says
/// when its size shrinks the images a lot (a CIFAR preset on one's own photos) or enlarges
/// most of them.
#[test]
fn a_store_knows_its_sources_sizes_and_notes_a_large_resize() {
    use simsiam::config::DataConfig;
    use simsiam::data::{open, Sides};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    std::fs::create_dir_all(root.join("a")).unwrap();
    for (i, (w, h)) in [(8, 8), (10, 12), (20, 16)].into_iter().enumerate() {
        common::save_rgb(&root.join(format!("a/{i}.png")), w, h, i as u64);
    }
    let sides = Sides { min: 8, median: 10, max: 16 };
    let want = Some(sides);
    let plain = DataConfig { image_size: 8, ..Default::default() };
    assert_eq!(open(&root, Split::Train, &plain).unwrap().source_sides, want);
    let cached = DataConfig { cache_dir: Some(tmp.path().join("cache")), ..plain.clone() };
    assert_eq!(open(&root, Split::Train, &cached).unwrap().source_sides, want, "decoded into the cache");
    let mapped = open(&root, Split::Train, &cached).unwrap();
    assert!(mapped.is_mapped());
    assert_eq!(mapped.source_sides, want, "read back from the cache");
    assert_eq!(mapped.subset(2, 0).source_sides, want, "a subset keeps them");
    assert!(sides.note(5).unwrap().contains("shrinks them to 5 px"), "median 10 >= 2 x 5");
    assert_eq!(sides.note(8), None);
    assert_eq!(sides.note(14), None, "3 x 10 >= 2 x 14");
    assert!(sides.note(16).unwrap().contains("enlarges most of them to 16 px"), "3 x 10 < 2 x 16");
    assert_eq!(Sides::of(Vec::new()), None);
}

/// A decode stopped for good (a second Ctrl-C, a kill) leaves its temporary pixels file, a
/// store's worth of disk: the next load through the cache removes it. Temporaries of live
/// processes (a decode in progress) and of other machines sharing the folder are kept.
#[test]
fn the_disk_cache_removes_what_stopped_decodes_left() {
    use simsiam::config::DataConfig;
    let tmp = tempfile::tempdir().unwrap();
    let (root, cache) = (tmp.path().join("images"), tmp.path().join("cache"));
    std::fs::create_dir_all(root.join("a")).unwrap();
    common::save_rgb(&root.join("a/1.png"), 8, 8, 1);
    std::fs::create_dir_all(&cache).unwrap();
    // This machine's name as the cache writes it (letters, digits and '-').
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    assert_eq!(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) }, 0);
    let host: String = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap()])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait_with_output().unwrap();
    let mut live = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let name = |host: &str, pid: u32| cache.join(format!("0123456789abcdef01234567.u8.{host}.{pid}.tmp"));
    let (left, running, elsewhere) = (name(&host, dead_pid), name(&host, live.id()), name("other-machine", dead_pid));
    for f in [&left, &running, &elsewhere] {
        std::fs::write(f, [0u8; 64]).unwrap();
    }
    let d = DataConfig { image_size: 8, cache_dir: Some(cache.clone()), ..Default::default() };
    assert_eq!(simsiam::data::open(&root, Split::Train, &d).unwrap().len(), 1);
    live.kill().unwrap();
    live.wait().unwrap();
    assert!(!left.exists(), "the dead process's temporary is removed");
    assert!(running.exists() && elsewhere.exists(), "a live process's and another machine's are kept");
}

/// A store mapped from the disk cache reads what is asked of it, ahead of use, and no more:
/// one byte read brings in its own page, not the next rows (`MADV_RANDOM`: the kernel's
/// read-around would take them too, and under memory pressure those reads evict each other),
/// rows named by `will_need` are in memory before they are touched, and `batches` reads each
/// next batch ahead; the pixels are the decoded ones throughout. Residency is `mincore`'s, after
/// the file's pages are dropped from the page cache; where they cannot be dropped (a tmpfs
/// holds its files in memory), the test says so and checks the pixels only.
#[test]
fn a_cached_store_reads_ahead_only_what_is_named() {
    use simsiam::config::DataConfig;
    use simsiam::data::{open, ImageStore};
    use std::os::fd::AsRawFd;
    // On the disk, not in /tmp, which may be a tmpfs.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (root, cache) = (tmp.path().join("images"), tmp.path().join("cache"));
    // Rows of 192 KiB, so that a batch of 45 (8.4 MiB) is more than one read-ahead request
    // takes (`read_ahead_kb`: 128 KiB by default, 8 MiB on the development machine).
    let (n, size) = (100i64, 256usize);
    for i in 0..n {
        let class = ["a", "b"][i as usize % 2];
        std::fs::create_dir_all(root.join(class)).unwrap();
        common::save_rgb(&root.join(format!("{class}/{i:02}.png")), size as u32, size as u32, i as u64);
    }
    let d = DataConfig { image_size: size, cache_dir: Some(cache.clone()), ..Default::default() };
    let plain = load(&root, DataFormat::Auto, Split::Train, size, false).unwrap();
    let decoded = open(&root, Split::Train, &d).unwrap();
    assert!(decoded.is_mapped() && !plain.is_mapped());
    assert!(decoded.images.equal(&plain.images));
    drop(decoded);
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "u8"))
        .unwrap();
    // Drops the file's pages from the page cache (clean and mapped by no one: all of them).
    let evict = || {
        let f = std::fs::File::open(&file).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let row = size * size * 3;
    // How many of row r's pages are in memory.
    let resident = |s: &ImageStore, r: usize| -> usize {
        let start = s.images.data_ptr() as usize + r * row;
        let aligned = start & !(page - 1);
        let pages = (start + row - aligned).div_ceil(page);
        let mut v = vec![0u8; pages];
        // SAFETY: the range lies in the store's mapping; `v` has a byte per page.
        assert_eq!(unsafe { libc::mincore(aligned as *mut libc::c_void, start + row - aligned, v.as_mut_ptr()) }, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    };
    let pages_of = |r: usize| {
        let start = r * row;
        (start + row).div_ceil(page) - start / page
    };
    // Read-ahead is asynchronous: waits up to 5 s for `rows` to be whole in memory, and
    // returns those that are not.
    let missing = |s: &ImageStore, rows: &[usize]| {
        let t0 = std::time::Instant::now();
        loop {
            let missing: Vec<usize> = rows.iter().copied().filter(|&r| resident(s, r) < pages_of(r)).collect();
            if missing.is_empty() || t0.elapsed().as_secs() >= 5 {
                return missing;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };

    evict();
    let store = open(&root, Split::Train, &d).unwrap();
    assert!(store.is_mapped());
    let cold = (0..n as usize).all(|r| resident(&store, r) == 0);
    if cold {
        // One byte of row 5: its page, and no read-around into rows 7 on.
        assert_eq!(store.images.int64_value(&[5, 0, 0, 0]), plain.images.int64_value(&[5, 0, 0, 0]));
        assert!(resident(&store, 5) >= 1);
        // A read-around's pages count once their reads are done: time for that.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let around: Vec<usize> = (7..n as usize).filter(|&r| resident(&store, r) > 0).collect();
        assert!(around.is_empty(), "rows read around a one-byte read: {around:?}");
        // Named rows arrive before they are touched; the rows between them do not.
        store.will_need(&tch::Tensor::from_slice(&[20i64, 33]));
        assert_eq!(missing(&store, &[20, 33]), [0usize; 0]);
        assert_eq!(resident(&store, 26), 0);
    } else {
        eprintln!("note: {} stays in the page cache after POSIX_FADV_DONTNEED: residency not checked", file.display());
    }
    // `batches`: every row in order, the whole next batch read ahead of its turn.
    let mut batches = store.batches(45);
    let first = batches.next().unwrap();
    if cold {
        let late = missing(&store, &(45..90).collect::<Vec<_>>());
        assert!(late.is_empty(), "rows of the second batch not read while the first is used: {late:?}");
        assert_eq!(resident(&store, 95), 0, "no further than the next batch");
    }
    let all: Vec<tch::Tensor> = std::iter::once(first).chain(batches).collect();
    assert_eq!(all.iter().map(|b| b.size()[0]).collect::<Vec<_>>(), [45, 45, 10]);
    assert!(tch::Tensor::cat(&all, 0).equal(&plain.images));
    // Gathers read the decoded pixels; placed on the CPU, the store is still the mapping.
    let idx = tch::Tensor::from_slice(&[99i64, 0, 20]);
    assert!(store.gather(&idx, tch::Device::Cpu).equal(&plain.images.index_select(0, &idx)));
    assert!(store.place(tch::Device::Cpu, simsiam::config::StorePlace::Auto).unwrap().is_mapped());
    // A subset is a copy in memory.
    assert!(!store.subset(10, 0).is_mapped());
}

/// The digest a resume compares: the same images under other names (moved data) give the same
/// one; a changed pixel of a sampled image, a changed label or another class name do not.
#[test]
fn a_stores_digest_is_its_images_not_their_place() {
    use simsiam::data::ImageStore;
    let n = 3000; // more than the 1,024 sampled rows: image 0 and every ~3rd are read
    let images = tch::Tensor::randint(256, [n, 8, 8, 3], (Kind::Uint8, tch::Device::Cpu));
    let store = |images: &tch::Tensor, labels: &tch::Tensor, classes: &[&str], dir: &str| {
        ImageStore::new(
            images.copy(),
            labels.copy(),
            classes.iter().map(|c| c.to_string()).collect(),
            (0..n).map(|i| format!("{dir}/img{i}.png")).collect(),
        )
    };
    let labels = tch::Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(2);
    let base = store(&images, &labels, &["a", "b"], "/data");
    assert_eq!(base.digest(), store(&images, &labels, &["a", "b"], "/moved/elsewhere").digest());
    let pixel = images.copy();
    let _ = pixel.i((0, 0, 0, 0)).fill_(pixel.int64_value(&[0, 0, 0, 0]) ^ 1);
    assert_ne!(base.digest(), store(&pixel, &labels, &["a", "b"], "/data").digest());
    let relabelled = labels.copy();
    let _ = relabelled.i(5).fill_(1 - labels.int64_value(&[5]));
    assert_ne!(base.digest(), store(&images, &relabelled, &["a", "b"], "/data").digest());
    assert_ne!(base.digest(), store(&images, &labels, &["a", "c"], "/data").digest());
}

/// Our store's resize is torchvision's `Resize(S) + CenterCrop(S)` on a PIL image (bilinear,
/// antialiased): a real photo, 160x120 PNG, shrunk to 48 px and enlarged to 144 px, against
/// torchvision's bytes (`scripts/reference/resize_fixture.py`); and two cuts of it whose long
/// side does not scale to a whole pixel count (157x119, 87x119), where torchvision truncates the
/// long side and rounds the crop's offset half to even: a pixel's shift or stretch there
/// would show as differences of tens of grey levels at the photo's edges.
#[test]
fn store_resize_matches_torchvision() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize");
    for (photo, name) in [("photo", ""), ("photo-wide", "wide-"), ("photo-tall", "tall-")] {
        let png = std::fs::read(dir.join(format!("{photo}.png"))).unwrap();
        for s in [48usize, 144] {
            let ours = simsiam::data::decode_to_square(&png, s).unwrap();
            let theirs = std::fs::read(dir.join(format!("torchvision-{name}{s}.rgb"))).unwrap();
            assert_eq!(ours.len(), theirs.len());
            let diff: Vec<i32> = ours.iter().zip(&theirs).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
            let mean = diff.iter().sum::<i32>() as f64 / diff.len() as f64;
            let max = *diff.iter().max().unwrap();
            eprintln!("{photo}, {s} px: mean |difference| {mean:.3}, max {max} (of 255)");
            // Rounding in two implementations of the same filter: within a grey level or two.
            assert!(mean < 0.5 && max <= 3, "{photo}, {s} px: mean {mean}, max {max}");
        }
    }
}

/// A folder's images come in torchvision's `ImageFolder` order, so that row i of a store (and
/// of `embed`'s arrays) is `ImageFolder(root).samples[i]`; an archive reads as the folder it
/// unpacks to, whatever order its members were written in (`tar` writes them in the file
/// system's order): the same classes (the folders below the prefix the images share,
/// subfolders counting for their class), the same order, the same pixels, the same digest.
#[test]
fn folders_and_their_archives_read_in_image_folder_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let files = [
        "dog/b.png",
        "dog/a/x.png",
        "dog/a.b/y.png",
        "dog/a/sub/z.png",
        "dog/c.png",
        "dog/A.png",
        "dog/a b/w.png",
        "dog/a-b/v.png",
        "cat/x/5.png",
        "cat/9.png",
        "bird/a/b/7.png",
    ];
    for (i, f) in files.iter().enumerate() {
        std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
        common::save_rgb(&root.join(f), 8 + i as u32, 8, i as u64);
    }
    let folder = load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(folder.classes, ["bird", "cat", "dog"]);
    // What torchvision 0.26's `ImageFolder(root).samples` lists for this tree (run here): a
    // class folder's own files first, then its subfolders by their path as a string.
    let image_folder = [
        "bird/a/b/7.png",
        "cat/9.png",
        "cat/x/5.png",
        "dog/A.png",
        "dog/b.png",
        "dog/c.png",
        "dog/a/x.png",
        "dog/a b/w.png",
        "dog/a-b/v.png",
        "dog/a.b/y.png",
        "dog/a/sub/z.png",
    ];
    let ends = |n: &String| n.strip_prefix(&format!("{}/", root.display())).unwrap().to_string();
    assert_eq!(folder.names.iter().map(ends).collect::<Vec<_>>(), image_folder);
    assert_eq!(Vec::<i64>::try_from(&folder.labels).unwrap(), vec![0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]);
    // Members in reverse order, below a prefix, gzipped.
    let archive = tmp.path().join("photos.tar.gz");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::fast(),
    ));
    let mut members = files.to_vec();
    members.sort();
    for f in members.iter().rev() {
        b.append_path_with_name(root.join(f), format!("photos/train/{f}")).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
    let s = load(&archive, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(s.classes, folder.classes);
    assert_eq!(Vec::<i64>::try_from(&s.labels).unwrap(), Vec::<i64>::try_from(&folder.labels).unwrap());
    let tail = |n: &String| n.rsplit_once("train/").unwrap().1.to_string();
    assert_eq!(s.names.iter().map(tail).collect::<Vec<_>>(), image_folder);
    assert!(s.images.equal(&folder.images), "the archive's pixels or order differ from the folder's");
    assert_eq!(s.digest(), folder.digest());

    // Images all in one folder: that folder is their class.
    let one = tmp.path().join("one.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&one).unwrap());
    b.append_path_with_name(root.join("dog/c.png"), "test/dog/c.png").unwrap();
    b.append_path_with_name(root.join("dog/b.png"), "test/dog/b.png").unwrap();
    b.into_inner().unwrap();
    let s = load(&one, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!((s.classes.clone(), s.len()), (vec!["dog".to_string()], 2));
    assert!(s.names[0].ends_with("test/dog/b.png"), "{:?}", s.names);

    // An image beside the class folders is an error naming it, in the folder as in an archive.
    common::save_rgb(&root.join("stray.png"), 8, 8, 0);
    let e = err_text(&root, 8, false);
    assert!(e.contains("stray.png") && e.contains("beside class folders"), "{e}");
    let stray = tmp.path().join("stray.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&stray).unwrap());
    b.append_dir_all("photos/train", &root).unwrap();
    b.into_inner().unwrap();
    let e = err_text(&stray, 8, false);
    assert!(e.contains("\"photos/train/stray.png\"") && e.contains("beside class folders"), "{e}");
}

/// Links in an archive read as unpacking it would make them: a hard link (GNU tar writes a
/// file's second path as one) and a symbolic link, even one to another link, are their
/// targets' images, where they were passed over; one to nothing the archive holds is an error
/// naming it, as a dangling link is in a folder.
#[test]
fn links_in_an_archive_are_the_images_they_name() {
    use tar::{EntryType, Header};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    for (i, f) in ["cat/1.png", "cat/2.png", "dog/3.png"].iter().enumerate() {
        std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
        common::save_rgb(&root.join(f), 8, 8, i as u64 + 5);
    }
    std::fs::hard_link(root.join("cat/1.png"), root.join("dog/hard.png")).unwrap();
    std::os::unix::fs::symlink("../cat/2.png", root.join("dog/soft.png")).unwrap();
    std::os::unix::fs::symlink("hard.png", root.join("dog/soft-to-hard.png")).unwrap();
    let folder = load(&root, DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!(folder.len(), 6);

    let link = |b: &mut tar::Builder<std::fs::File>, kind: EntryType, name: &str, target: &str| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_link(&mut h, name, target).unwrap();
    };
    let archive = |name: &str, soft_target: &str| {
        let path = tmp.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for f in ["cat/1.png", "cat/2.png", "dog/3.png"] {
            b.append_path_with_name(root.join(f), format!("./data/{f}")).unwrap();
        }
        link(&mut b, EntryType::Link, "./data/dog/hard.png", "./data/cat/1.png");
        link(&mut b, EntryType::Symlink, "./data/dog/soft.png", soft_target);
        link(&mut b, EntryType::Symlink, "./data/dog/soft-to-hard.png", "hard.png");
        b.into_inner().unwrap();
        path
    };
    let s = load(&archive("links.tar", "../cat/2.png"), DataFormat::Auto, Split::Train, 8, false).unwrap();
    assert_eq!((s.len(), s.classes.clone()), (6, folder.classes.clone()));
    assert!(s.images.equal(&folder.images), "the archive's pixels differ from its folder's");
    assert_eq!(s.digest(), folder.digest());

    let e = err_text(&archive("dangling.tar", "../cat/9.png"), 8, false);
    assert!(e.contains("data/dog/soft.png") && e.contains("data/cat/9.png") && e.contains("does not hold"), "{e}");
    std::os::unix::fs::symlink("../cat/9.png", root.join("dog/dangling.png")).unwrap();
    let e = err_text(&root, 8, false);
    assert!(e.contains("dog/dangling.png") && e.contains("a link to ../cat/9.png, which does not exist"), "{e}");
}
