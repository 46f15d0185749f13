//! Source archives: a good one extracts exactly; each malicious trick is
//! refused with a clear reason and writes nothing outside the destination.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use liftoff::config::VcsMapping;
use liftoff::run::source::{Limits, SourceError, extract_tar_gz, resolve_url};

/// One raw tar entry; names and link targets are written into the header
/// bytes unchecked, as an attacker would.
struct E<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data,
        mode: 0o644,
    }
}

fn special<'a>(name: &'a str, kind: tar::EntryType, link: &'a str) -> E<'a> {
    E {
        name,
        kind,
        link,
        data: b"",
        mode: 0o777,
    }
}

fn tar_gz(entries: &[E]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            g.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Extracts into `root/ws/source`; returns the result and the root (to check
/// that nothing appeared beside the destination).
fn extract(
    entries: &[E],
    limits: Limits,
) -> (
    Result<liftoff::run::source::Extracted, String>,
    tempfile::TempDir,
) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("ws")).unwrap();
    let r = extract_tar_gz(
        &tar_gz(entries)[..],
        &root.path().join("ws/source"),
        limits,
        None,
    )
    .map_err(|e| e.to_string());
    (r, root)
}

fn refused(entries: &[E], needle: &str) {
    let (r, root) = extract(entries, Limits::default());
    let err = r.expect_err("archive must be refused");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(
        !root.path().join("evil").exists() && !root.path().join("ws/evil").exists(),
        "wrote outside the destination"
    );
}

#[test]
fn a_good_archive_extracts_exactly() {
    let (r, root) = extract(
        &[
            special("./", tar::EntryType::Directory, ""),
            special("src/", tar::EntryType::Directory, ""),
            file("src/main.tf", b"resource \"null_resource\" \"x\" {}\n"),
            file("./README.md", b"hello"),
            special("src/link.tf", tar::EntryType::Symlink, "main.tf"),
            special("docs", tar::EntryType::Symlink, "src"),
            special("src/hard.tf", tar::EntryType::Link, "src/main.tf"),
            E {
                name: "run.sh",
                kind: tar::EntryType::Regular,
                link: "",
                data: b"#!/bin/sh\n",
                mode: 0o6755,
            },
        ],
        Limits::default(),
    );
    let done = r.unwrap();
    assert_eq!(done.bytes, 32 + 5 + 10);
    let src = root.path().join("ws/source");
    assert_eq!(
        std::fs::read_to_string(src.join("src/link.tf")).unwrap(),
        "resource \"null_resource\" \"x\" {}\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("src/hard.tf")).unwrap(),
        "resource \"null_resource\" \"x\" {}\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("README.md")).unwrap(),
        "hello"
    );
    assert!(src.join("docs/main.tf").exists());
    let mode = std::fs::metadata(src.join("run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755, "setuid/setgid bits must be dropped");
}

#[test]
fn absolute_path() {
    refused(
        &[file("/tmp/evil-liftoff-test", b"x")],
        "absolute path or ..",
    );
    assert!(!Path::new("/tmp/evil-liftoff-test").exists());
}

#[test]
fn dot_dot_path() {
    refused(&[file("../evil", b"x")], "absolute path or ..");
    refused(&[file("a/../../evil", b"x")], "absolute path or ..");
}

#[test]
fn symlink_to_an_absolute_path() {
    refused(
        &[special("etc", tar::EntryType::Symlink, "/etc")],
        "points outside",
    );
}

#[test]
fn symlink_escaping_with_dot_dot() {
    refused(
        &[special("a/b", tar::EntryType::Symlink, "../../evil")],
        "points outside",
    );
}

#[test]
fn writing_through_a_symlink() {
    // The link itself stays inside, but a later entry would write through it.
    refused(
        &[
            special("sub/", tar::EntryType::Directory, ""),
            special("via", tar::EntryType::Symlink, "sub"),
            file("via/file", b"x"),
        ],
        "through the symlink",
    );
}

#[test]
fn replacing_a_file_with_a_symlink_then_writing() {
    // A symlink and then a file of the same name: the file replaces the link,
    // it never writes through it.
    let (r, root) = extract(
        &[
            special("f", tar::EntryType::Symlink, "g"),
            file("f", b"data"),
        ],
        Limits::default(),
    );
    r.unwrap();
    let f = root.path().join("ws/source/f");
    assert!(
        !std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!root.path().join("ws/source/g").exists());
}

#[test]
fn hard_link_outside() {
    refused(
        &[special("passwd", tar::EntryType::Link, "/etc/passwd")],
        "points outside",
    );
    refused(
        &[special("passwd", tar::EntryType::Link, "../../etc/passwd")],
        "points outside",
    );
}

#[test]
fn hard_link_to_something_not_extracted() {
    refused(
        &[special("x", tar::EntryType::Link, "missing")],
        "regular file extracted before it",
    );
}

#[test]
fn device_nodes_and_fifos() {
    refused(&[special("null", tar::EntryType::Char, "")], "device node");
    refused(&[special("sda", tar::EntryType::Block, "")], "device node");
    refused(&[special("pipe", tar::EntryType::Fifo, "")], "FIFO");
}

#[test]
fn decompression_bomb_by_size() {
    let zeros = vec![0u8; 8 << 20];
    let archive = tar_gz(&[file("zeros", &zeros)]);
    assert!(
        archive.len() < 64 << 10,
        "compresses well: {}",
        archive.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let err = extract_tar_gz(
        &archive[..],
        dir.path(),
        Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::TooLarge(_)), "{err:?}");
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
}

#[test]
fn decompression_bomb_by_file_count() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| file(n, b"")).collect();
    let dir = tempfile::tempdir().unwrap();
    let err = extract_tar_gz(
        &tar_gz(&entries)[..],
        dir.path(),
        Limits {
            max_bytes: 1 << 20,
            max_entries: 10,
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::TooLarge(_)), "{err:?}");
    assert!(err.to_string().contains("more than 10 entries"), "{err}");
}

#[test]
fn corrupt_and_truncated_archives() {
    let dir = tempfile::tempdir().unwrap();
    assert!(extract_tar_gz(&b"not gzip at all"[..], dir.path(), Limits::default(), None).is_err());
    let good = tar_gz(&[file("a", &vec![7u8; 100_000])]);
    let err =
        extract_tar_gz(&good[..good.len() / 2], dir.path(), Limits::default(), None).unwrap_err();
    assert!(matches!(err, SourceError::Corrupt(_)), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("corrupt") || err.contains("truncated"),
        "{err}"
    );
    let mut junk = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    junk.write_all(&[0xffu8; 4096]).unwrap();
    assert!(
        extract_tar_gz(
            &junk.finish().unwrap()[..],
            dir.path(),
            Limits::default(),
            None
        )
        .is_err()
    );
}

#[test]
fn private_vcs_urls() {
    let maps = vec![
        VcsMapping {
            index: 0,
            name: "bitbucket_pool".into(),
            base_endpoint: "http://192.168.2.2".into(),
        },
        VcsMapping {
            index: 1,
            name: "github_pool".into(),
            base_endpoint: "https://internal-github.net".into(),
        },
    ];
    assert_eq!(
        resolve_url("private://github_pool/org/repo/tarball/abc", &maps).unwrap(),
        "https://internal-github.net/org/repo/tarball/abc"
    );
    assert_eq!(
        resolve_url("https://bucket.s3/x.tar.gz?sig=1", &maps).unwrap(),
        "https://bucket.s3/x.tar.gz?sig=1"
    );
    let err = resolve_url("private://gitlab_pool/x", &maps).unwrap_err();
    assert!(matches!(err, SourceError::Url(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("SPACELIFT_PRIVATEVCS_MAPPING_NAME_<N>=gitlab_pool"),
        "{err}"
    );
    assert!(resolve_url("ftp://x", &maps).is_err());
    assert!(resolve_url("private:///x", &maps).is_err());
}

/// A PAX header (`x`) carrying `records`, then `entry`'s header and data.
fn with_pax(b: &mut tar::Builder<impl Write>, records: &[(&str, &str)], entry: &E) {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut n = rest.len() + 1;
        while n.to_string().len() + rest.len() != n {
            n = n.to_string().len() + rest.len();
        }
        body.extend_from_slice(format!("{n}{rest}").as_bytes());
    }
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &body[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path(entry.name).unwrap();
    h.set_entry_type(entry.kind);
    h.set_size(entry.data.len() as u64);
    h.set_mode(entry.mode);
    h.set_cksum();
    b.append(&h, entry.data).unwrap();
}

#[test]
fn pax_paths_and_link_paths_are_honoured_and_checked() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    with_pax(
        &mut b,
        &[("path", "pax/dir/main.tf"), ("mtime", "1.5")],
        &file("ignored-name", b"pax data"),
    );
    with_pax(
        &mut b,
        &[("path", "pax/link.tf"), ("linkpath", "dir/main.tf")],
        &special("ignored-link", tar::EntryType::Symlink, ""),
    );
    let archive = b.into_inner().unwrap().finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    extract_tar_gz(&archive[..], dir.path(), Limits::default(), None).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("pax/link.tf")).unwrap(),
        b"pax data"
    );
    assert!(!dir.path().join("ignored-name").exists());

    // A PAX path with `..` is refused like a header path.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    with_pax(&mut b, &[("path", "../evil")], &file("fine", b"x"));
    let archive = b.into_inner().unwrap().finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err =
        extract_tar_gz(&archive[..], &dir.path().join("d"), Limits::default(), None).unwrap_err();
    assert!(matches!(err, SourceError::Unsafe(_)), "{err:?}");
    assert!(err.to_string().contains("absolute path or .."), "{err}");
    assert!(!dir.path().join("evil").exists());

    // A PAX size that disagrees with the header is refused (two parsers
    // would see two archives).
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    with_pax(&mut b, &[("size", "0")], &file("f", b"12345"));
    let archive = b.into_inner().unwrap().finish().unwrap();
    let err =
        extract_tar_gz(&archive[..], &dir.path().join("e"), Limits::default(), None).unwrap_err();
    assert!(matches!(err, SourceError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("PAX size"), "{err}");
}
