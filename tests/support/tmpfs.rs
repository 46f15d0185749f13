//! A small real tmpfs for tests that fill a disk: [`Tmpfs::mount`] (at
//! `state` in a new temporary directory) or [`Tmpfs::mount_at`] checks for
//! root (failing with the reason), mounts it with the given options
//! (`size=8m,mode=0755`), and unmounts it (lazily) on drop however the test
//! ends; [`Tmpfs::remount`] changes its options (more room).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    pub path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// A tmpfs at `<a new temporary directory>/state`.
    pub fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Tmpfs::mount_at(&dir.path().join("state"), options);
        fs._dir = Some(dir);
        fs
    }

    /// A tmpfs at `path` (created if missing).
    pub fn mount_at(path: &Path, options: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs and needs root: run the suite as root (scripts/test.sh and CI do)"
        );
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "liftoff-test"])
            .arg(path)
            .status()
            .expect("mount(8) is needed to mount a small tmpfs");
        assert!(
            st.success(),
            "mounting a tmpfs ({options}) at {} failed (needs root and CAP_SYS_ADMIN)",
            path.display()
        );
        Tmpfs {
            path: path.to_path_buf(),
            _dir: None,
        }
    }

    /// `mount -o remount,<options>`: e.g. more room.
    pub fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "remounting {} failed", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
