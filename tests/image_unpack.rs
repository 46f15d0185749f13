//! Layer unpacking against hostile and tricky layers, built here with the
//! tar crate (a registry would hand them over byte for byte): `..`,
//! absolute names, a symlink then a path through it, hard links out, a
//! gzip bomb, a wrong diff_id (each refused with nothing written outside
//! the image's directory); whiteouts and opaque directories (in either
//! order within their layer), dropped devices and setuid bits, squashed
//! ownership, gzip and multi-frame zstd layers.

mod support;

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use liftoff::beneath::Root;
use liftoff::image::sha256;
use liftoff::image::unpack::{Budget, LayerError, apply};
use support::runs::{names, open_tempdir};

enum E<'a> {
    File(&'a str, &'a [u8], u32, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
}

/// A tar whose names are written raw (the builder would refuse `..`).
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match e {
            E::File(n, d, mode, uid) => {
                h.set_mode(*mode);
                h.set_uid(*uid);
                (n, d, tar::EntryType::Regular, None)
            }
            E::Dir(n) => {
                h.set_mode(0o755);
                (n, b"", tar::EntryType::Directory, None)
            }
            E::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
            E::Hard(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
            E::Fifo(n) => (n, b"", tar::EntryType::Fifo, None),
            E::Char(n) => (n, b"", tar::EntryType::Char, None),
        };
        if !matches!(e, E::File(..) | E::Dir(_)) {
            h.set_mode(0o777);
        }
        let raw = &mut h.as_gnu_mut().unwrap().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            let l = &mut h.as_gnu_mut().unwrap().linkname;
            l[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Image {
    _d: tempfile::TempDir,
    outside: PathBuf,
    rootfs: PathBuf,
    root: Root,
}

fn image() -> Image {
    let d = open_tempdir();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    let rootfs = d.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let root = Root::open(&rootfs).unwrap();
    Image {
        _d: d,
        outside,
        rootfs,
        root,
    }
}

fn apply_tar(img: &Image, tar: Vec<u8>) -> Result<(), String> {
    let id = sha256(&tar);
    apply(&img.root, Cursor::new(tar), &id, &mut Budget::new(1 << 30)).map_err(|e| e.to_string())
}

/// Nothing but the planted secret is outside, unchanged.
fn outside_untouched(img: &Image) {
    let names: Vec<_> = std::fs::read_dir(&img.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "something was written outside the image");
    assert_eq!(
        std::fs::read_to_string(img.outside.join("secret")).unwrap(),
        "host secret"
    );
    let parent: Vec<_> = std::fs::read_dir(img.outside.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(parent.len(), 2, "{parent:?}");
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    type Make = Box<dyn Fn(&Image) -> Vec<u8>>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "dot-dot",
            Box::new(|_| layer(&[E::File("../outside/pwned", b"x", 0o644, 0)])),
            "`..`",
        ),
        (
            "nested dot-dot",
            Box::new(|_| {
                layer(&[
                    E::Dir("a"),
                    E::File("a/../../outside/pwned", b"x", 0o644, 0),
                ])
            }),
            "`..`",
        ),
        (
            "absolute",
            Box::new(|img| {
                let p = format!("{}/pwned", img.outside.display());
                layer(&[E::File(Box::leak(p.into_boxed_str()), b"x", 0o644, 0)])
            }),
            "absolute",
        ),
        (
            "symlink then through it",
            Box::new(|img| {
                let t = img.outside.display().to_string();
                layer(&[
                    E::Symlink("link", Box::leak(t.into_boxed_str())),
                    E::File("link/pwned", b"x", 0o644, 0),
                ])
            }),
            "symlink",
        ),
        (
            "relative symlink then through it",
            Box::new(|_| {
                layer(&[
                    E::Symlink("up", "../outside"),
                    E::File("up/pwned", b"x", 0o644, 0),
                ])
            }),
            "symlink",
        ),
        (
            "symlinked directory then a dir through it",
            Box::new(|_| layer(&[E::Symlink("up", "../outside"), E::Dir("up/sub")])),
            "symlink",
        ),
        (
            "hard link out by ..",
            Box::new(|_| layer(&[E::Hard("stolen", "../outside/secret")])),
            "`..`",
        ),
        (
            "hard link out by an absolute name",
            Box::new(|img| {
                let t = format!("{}/secret", img.outside.display());
                layer(&[E::Hard("stolen", Box::leak(t.into_boxed_str()))])
            }),
            "absolute",
        ),
        (
            "hard link through a symlink",
            Box::new(|_| {
                layer(&[
                    E::Symlink("up", "../outside"),
                    E::Hard("stolen", "up/secret"),
                ])
            }),
            "symlink",
        ),
    ];
    for (name, make, why) in cases {
        let img = image();
        let err = apply_tar(&img, make(&img)).expect_err(name);
        assert!(err.contains(why), "{name}: {err}");
        outside_untouched(&img);
        assert!(!img.rootfs.join("stolen").exists(), "{name}");
    }
}

#[test]
fn a_gzip_bomb_stops_at_the_bound() {
    let img = image();
    let big = vec![0u8; 64 << 20];
    let tar = layer(&[E::File("bomb", &big, 0o644, 0)]);
    let id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20, "the bomb is small: {}", gz.len());
    let err = apply(&img.root, Cursor::new(gz), &id, &mut Budget::new(4 << 20)).unwrap_err();
    assert!(matches!(err, LayerError::Bad(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("LIFTOFF_IMAGE_MAX_BYTES"), "{err}");
    let written = std::fs::metadata(img.rootfs.join("bomb")).map_or(0, |m| m.len());
    assert!(written <= 4 << 20, "{written}");
    outside_untouched(&img);
}

#[test]
fn a_wrong_diff_id_is_refused() {
    let img = image();
    let tar = layer(&[E::File("f", b"data", 0o644, 0)]);
    let wrong = sha256(b"something else");
    let err = apply(
        &img.root,
        Cursor::new(tar),
        &wrong,
        &mut Budget::new(1 << 30),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("diff_id") && err.contains(&wrong), "{err}");
}

#[test]
fn whiteouts_and_opaque_directories_follow_the_image_spec() {
    for opaque_last in [false, true] {
        let img = image();
        apply_tar(
            &img,
            layer(&[
                E::Dir("a"),
                E::File("a/x", b"x", 0o644, 0),
                E::Dir("a/sub"),
                E::File("a/sub/y", b"y", 0o644, 0),
                E::Dir("b"),
                E::File("b/z", b"z", 0o644, 0),
                E::File("keep", b"k", 0o644, 0),
                E::File("gone", b"g", 0o644, 0),
            ]),
        )
        .unwrap();
        let mut second = vec![
            E::File("a/new", b"n", 0o644, 0),
            E::File("a/sub2/w", b"w", 0o644, 0),
        ];
        let marks = [
            E::File("a/.wh..wh..opq", b"", 0o644, 0),
            E::File(".wh.gone", b"", 0o644, 0),
            E::File(".wh.b", b"", 0o644, 0),
        ];
        if opaque_last {
            second.extend(marks);
        } else {
            let mut m: Vec<E> = marks.into_iter().collect();
            m.extend(second);
            second = m;
        }
        apply_tar(&img, layer(&second)).unwrap();
        assert_eq!(
            names(&img.rootfs.join("a")),
            ["new", "sub2"],
            "opaque last: {opaque_last}"
        );
        assert_eq!(
            names(&img.rootfs),
            ["a", "keep"],
            "opaque last: {opaque_last}"
        );
        assert_eq!(
            std::fs::read_to_string(img.rootfs.join("a/sub2/w")).unwrap(),
            "w"
        );
    }
}

#[test]
fn devices_and_setuid_are_dropped_and_ownership_is_squashed() {
    let img = image();
    apply_tar(
        &img,
        layer(&[
            E::Char("dev-null"),
            E::Fifo("fifo"),
            E::File("suid", b"#!/bin/sh\n", 0o4755, 0),
            E::File("job-only", b"mine", 0o600, 1983),
            E::File("root-only", b"root", 0o600, 0),
            E::File("a", b"same", 0o644, 0),
            E::Hard("b", "a"),
            E::Symlink("s", "/etc/passwd"),
        ]),
    )
    .unwrap();
    assert!(!img.rootfs.join("dev-null").exists() && !img.rootfs.join("fifo").exists());
    let mode = |n: &str| {
        std::fs::symlink_metadata(img.rootfs.join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(
        mode("job-only") & 0o004,
        0o004,
        "the job's own file is readable to it"
    );
    assert_eq!(
        mode("root-only") & 0o044,
        0,
        "root's private file stays private"
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("b")).unwrap(),
        "same"
    );
    assert_eq!(
        std::fs::read_link(img.rootfs.join("s")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn gzip_and_multi_frame_zstd_layers_unpack() {
    let tar = layer(&[E::Dir("d"), E::File("d/f", &vec![7u8; 300_000], 0o644, 0)]);
    let id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let (a, b) = tar.split_at(100_000);
    let mut zst = ruzstd::encoding::compress_to_vec(a, ruzstd::encoding::CompressionLevel::Fastest);
    zst.extend(ruzstd::encoding::compress_to_vec(
        b,
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    for blob in [gz, zst, tar.clone()] {
        let img = image();
        apply(&img.root, Cursor::new(blob), &id, &mut Budget::new(1 << 30)).unwrap();
        assert_eq!(
            std::fs::read(img.rootfs.join("d/f")).unwrap().len(),
            300_000
        );
    }
}

#[test]
fn long_names_are_read_bounded() {
    let img = image();
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/f", "d".repeat(250));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
    let link = format!("{}/l", "d".repeat(250));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, &link, "x".repeat(300)).unwrap();
    apply_tar(&img, b.into_inner().unwrap()).unwrap();
    assert_eq!(std::fs::read(img.rootfs.join(&long)).unwrap(), b"ok");
    assert_eq!(
        std::fs::read_link(img.rootfs.join(&link)).unwrap(),
        Path::new(&"x".repeat(300))
    );

    let img = image();
    let mut b = tar::Builder::new(Vec::new());
    let huge = "a/".repeat(8 << 20);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(0);
    b.append_data(&mut h, format!("{huge}f"), &b""[..]).unwrap();
    let err = apply_tar(&img, b.into_inner().unwrap()).unwrap_err();
    assert!(err.contains("long name"), "{err}");
    assert!(names(&img.rootfs).is_empty());
}
