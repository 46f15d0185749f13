//! Value syntaxes shared by the configuration: Go-style durations (the seed's
//! `1000s`, `120m`, `1h30m`), strict booleans, byte sizes, percentages,
//! mount lists, environment variable names and URLs.
//!
//! Every parser returns `Err(String)` whose text says what was expected; the
//! caller adds the variable's name and (for non-secrets) the value.
//!
//! Also the checks shared by the configuration, `liftoff exec` flags and run
//! specs: [`bounded_duration`] (every duration has a maximum, so adding it to
//! an `Instant` never overflows; [`later`] saturates anyway), [`mount`] and
//! [`mount_risk`] (escapes, targets that hide the workspace, host paths that
//! break isolation), [`image_root`] and [`hostname`].

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// What a duration must look like, for error messages.
pub const DURATION_SYNTAX: &str =
    "a Go duration such as 1000s, 120m, 1h30m or 7m (units: ns, us, ms, s, m, h)";

/// Parses a Go `time.ParseDuration` string. Negative durations are refused:
/// nothing in liftoff's configuration can be negative.
pub fn duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = || format!("expected {DURATION_SYNTAX}");
    if s.is_empty() {
        return Err(bad());
    }
    let s = match s.as_bytes()[0] {
        b'-' => {
            return Err(format!(
                "a negative duration is not allowed; expected {DURATION_SYNTAX}"
            ));
        }
        b'+' => &s[1..],
        _ => s,
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, next) = after_num.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "missing unit in {text:?}; expected {DURATION_SYNTAX}"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?}; expected {DURATION_SYNTAX}"
                ));
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| format!("number too large; expected {DURATION_SYNTAX}"))?
        };
        let mut ns = int
            .checked_mul(unit_ns)
            .ok_or_else(|| "duration too large".to_string())?;
        // Fraction: digits beyond what the unit can resolve are dropped.
        let mut scale = unit_ns;
        for d in frac_part.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            ns += u128::from(d - b'0') * scale;
        }
        total_ns = total_ns
            .checked_add(ns)
            .ok_or_else(|| "duration too large".to_string())?;
        rest = next;
    }
    let secs =
        u64::try_from(total_ns / 1_000_000_000).map_err(|_| "duration too large".to_string())?;
    Ok(Duration::new(secs, (total_ns % 1_000_000_000) as u32))
}

/// Longest run and logs timeout (and shutdown grace): 30 days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
/// Longest kill grace and link interval: 1 hour.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3_600);

/// A duration longer than 0 and at most `max`.
pub fn bounded_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let d = duration(text)?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    if d > max {
        return Err(format!(
            "is longer than the maximum {}; expected a duration up to {}",
            format_duration(max),
            format_duration(max)
        ));
    }
    Ok(d)
}

/// `base + d`, or a point about a century later when that overflows.
pub fn later(base: Instant, d: Duration) -> Instant {
    base.checked_add(d)
        .or_else(|| base.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(base)
}

/// Formats a duration as Go's `time.Duration.String` does: `7m0s`, `1h10m0s`,
/// `1.5s`, `250ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns, 1_000_000));
    }
    let secs_total = d.as_secs();
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s_ns = ns - u128::from(h * 3600 + m * 60) * 1_000_000_000;
    let s = trim_fraction(s_ns, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Booleans: true/false/1/0, case-insensitive, and nothing else.
pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true, false, 1 or 0".into()),
    }
}

/// A byte size: a whole number with an optional unit (K, M, G, T in powers of
/// 1000; KiB, MiB, GiB, TiB in powers of 1024; a trailing B is optional).
pub fn byte_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a byte size such as 1073741824, 512MiB or 2GiB";
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(EXPECTED.into());
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("number too large; {EXPECTED}"))?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    let mult: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(format!("unknown unit {:?}; {EXPECTED}", &s[digits..])),
    };
    if unit.matches('b').count() > 1 {
        return Err(EXPECTED.into());
    }
    number
        .checked_mul(mult)
        .ok_or_else(|| format!("size too large; {EXPECTED}"))
}

/// A percentage from 1 to 100, with or without a `%` sign.
pub fn percent(text: &str) -> Result<u8, String> {
    const EXPECTED: &str = "expected a whole percentage from 1 to 100, such as 90 or 90%";
    let s = text.trim();
    let s = s.strip_suffix('%').unwrap_or(s).trim();
    match s.parse::<u8>() {
        Ok(p) if (1..=100).contains(&p) => Ok(p),
        _ => Err(EXPECTED.into()),
    }
}

/// A POSIX-portable environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
pub fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// One extra mount: a host path bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    pub host: PathBuf,
    pub sandbox: PathBuf,
    pub read_only: bool,
}

/// A sandbox path must be absolute, must not contain `..`, and must not be `/`.
pub fn sandbox_path(text: &str) -> Result<PathBuf, String> {
    let p = Path::new(text);
    if !p.is_absolute() {
        return Err(format!("sandbox path {text:?} must be absolute"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("sandbox path {text:?} must not contain .."));
    }
    if p.components().count() < 2 {
        return Err(format!(
            "sandbox path {text:?} cannot be the root directory"
        ));
    }
    Ok(p.to_path_buf())
}

/// Splits `text` at every `sep` not preceded by a backslash; the items keep
/// their escapes (see [`unescape`]).
pub fn split_escaped(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&text[start..]);
    out
}

/// The inverse of [`unescape`]: `:`, `,` and `\` get a backslash.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `\:` → `:`, `\,` → `,`, `\\` → `\`; any other backslash stays.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&n)) if matches!(n, ':' | ',' | '\\') => {
                out.push(n);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// A comma-separated mount list: splits at commas not escaped as `\,`,
/// trimming items and dropping empty ones.
pub fn mount_list(text: &str) -> impl Iterator<Item = &str> {
    split_escaped(text, ',')
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Where the job's workspace is mounted; no extra mount may cover it.
pub const SANDBOX_WORKSPACE: &str = "/mnt/workspace";

/// Sandbox paths a mount may not cover: the kernel's own file systems.
const RESERVED_TARGETS: &[&str] = &["/proc", "/sys", "/dev"];

/// One mount in the seed's form `/host/path:/sandbox/path`, with liftoff's
/// optional `:ro` or `:rw` suffix (read-write by default, as Docker does).
/// A `:`, `,` or `\` inside a path is written `\:`, `\,` or `\\`. The host
/// path must exist; the sandbox path must not be, hold or lie inside the
/// workspace (/mnt/workspace), /proc, /sys or /dev.
pub fn mount(item: &str) -> Result<Mount, String> {
    const EXPECTED: &str =
        "expected /host/path:/sandbox/path[:ro|:rw] (write a : inside a path as \\:)";
    let parts = split_escaped(item, ':');
    let (host, sandbox, read_only) = match parts.as_slice() {
        [h, s] => (*h, *s, false),
        [h, s, "ro"] => (*h, *s, true),
        [h, s, "rw"] => (*h, *s, false),
        [_, _, mode] => {
            return Err(format!(
                "unknown mount mode {mode:?} in {item:?}; {EXPECTED}"
            ));
        }
        _ => return Err(format!("{item:?} is not a mount; {EXPECTED}")),
    };
    let (host, sandbox) = (unescape(host), unescape(sandbox));
    let host_path = Path::new(&host);
    if !host_path.is_absolute() {
        return Err(format!(
            "host path {host:?} in {item:?} must be absolute; {EXPECTED}"
        ));
    }
    if !host_path.exists() {
        return Err(format!(
            "host path {host:?} does not exist: create it or remove the mount"
        ));
    }
    let sandbox = sandbox_path(&sandbox).map_err(|e| format!("{e} (in {item:?})"))?;
    let workspace = Path::new(SANDBOX_WORKSPACE);
    if sandbox.starts_with(workspace) || workspace.starts_with(&sandbox) {
        return Err(format!(
            "sandbox path {} in {item:?} would cover the job's workspace {SANDBOX_WORKSPACE}: mount it elsewhere, e.g. /mnt/data",
            sandbox.display()
        ));
    }
    if let Some(r) = RESERVED_TARGETS.iter().find(|r| sandbox.starts_with(r)) {
        return Err(format!(
            "sandbox path {} in {item:?} is inside {r}, which the sandbox provides itself: mount it elsewhere, e.g. /mnt/data",
            sandbox.display()
        ));
    }
    Ok(Mount {
        host: host_path.to_path_buf(),
        sandbox,
        read_only,
    })
}

/// The opt-in that lets [`mount_risk`] mounts through (with a warning).
pub const ALLOW_UNSAFE_MOUNTS: &str = "LIFTOFF_ALLOW_UNSAFE_MOUNTS";
/// Where the service's configuration (token, key) lives.
pub const CONFIG_DIR: &str = "/etc/liftoff";
/// Host paths that hand the host to a job: the kernel's file systems and
/// the container runtimes' control sockets.
const HOST_CONTROL: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/run/containerd",
    "/run/podman",
    "/var/run/podman",
    "/run/crio",
    "/var/run/crio",
    "/run/systemd",
    "/run/dbus",
    "/var/run/dbus",
];

/// Why the host path of `m` breaks the sandbox's isolation, if it does: it is
/// `/`, lies in /proc, /sys, /dev or /boot, is a container runtime's socket,
/// or is, holds or lies inside the state directory or liftoff's
/// configuration directory. Symlinks are resolved first.
pub fn mount_risk(m: &Mount, state_dir: &Path) -> Option<String> {
    let host = std::fs::canonicalize(&m.host).unwrap_or_else(|_| m.host.clone());
    if host == Path::new("/") {
        return Some("mounts the host's whole file system".into());
    }
    if let Some(p) = HOST_CONTROL
        .iter()
        .find(|p| host.starts_with(p) || Path::new(p).starts_with(&host))
    {
        return Some(format!("exposes {p} (it controls the host)"));
    }
    let state = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    for (what, dir) in [
        ("liftoff's state directory", state.as_path()),
        ("liftoff's configuration directory", Path::new(CONFIG_DIR)),
    ] {
        if host.starts_with(dir) || dir.starts_with(&host) {
            return Some(format!("exposes {what} {}", dir.display()));
        }
    }
    None
}

/// Host directories that are never a runner image's root.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/etc", "/usr", "/var", "/proc", "/sys", "/dev", "/boot", "/run", "/home", "/root",
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/tmp", "/opt", "/srv", "/mnt",
    "/media",
];

/// A runner image root (`runner.root`, `liftoff exec --root`): an absolute
/// directory, symlinks resolved, that is not `/` nor a host system directory
/// (/etc, /usr, /var, ... or inside /proc, /sys, /dev), and holds `usr/` or
/// `bin/`. Returns the resolved path.
pub fn image_root(path: &Path) -> Result<PathBuf, String> {
    const EXPECTED: &str = "expected the directory of an unpacked runner image (holding usr/ or bin/), such as /var/lib/liftoff-images/runner";
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{} must be an absolute path without ..; {EXPECTED}",
            path.display()
        ));
    }
    let real = std::fs::canonicalize(path)
        .map_err(|e| format!("{} cannot be used ({e}); {EXPECTED}", path.display()))?;
    if !real.is_dir() {
        return Err(format!("{} is not a directory; {EXPECTED}", path.display()));
    }
    if SYSTEM_DIRS.iter().any(|d| real == Path::new(d))
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|d| real.starts_with(d))
    {
        return Err(format!(
            "{} is the host's {}, not an image: the job would see the host's files; {EXPECTED}",
            path.display(),
            real.display()
        ));
    }
    if !real.join("usr").is_dir() && !real.join("bin").is_dir() {
        return Err(format!(
            "{} holds neither usr/ nor bin/; {EXPECTED}",
            path.display()
        ));
    }
    Ok(real)
}

/// A hostname per RFC 1123: 1 to 64 characters, dot-separated labels of
/// letters, digits and `-`, no label starting or ending with `-`.
pub fn hostname(text: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected a hostname of letters, digits, - and ., at most 64 characters, such as build-1";
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok { Ok(()) } else { Err(EXPECTED.into()) }
}

/// An http(s) URL with a host, as the VCS agent mappings and proxies need.
/// Returns the URL without a trailing slash.
pub fn http_url(text: &str) -> Result<String, String> {
    let s = text.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            "expected an http:// or https:// URL, such as https://internal-github.net".to_string()
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || s.chars().any(char::is_whitespace) {
        return Err(
            "expected an http:// or https:// URL with a host, such as http://192.168.2.2".into(),
        );
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        let ok = [
            ("1000s", 1_000_000),
            ("120m", 7_200_000),
            ("1h30m", 5_400_000),
            ("7m", 420_000),
            ("0", 0),
            ("1.5s", 1500),
            (".5s", 500),
            ("2h45m30.5s", 9_930_500),
            ("300ms", 300),
            ("+5s", 5000),
            ("1h1h", 7_200_000),
        ];
        for (text, ms) in ok {
            assert_eq!(duration(text).unwrap().as_millis(), ms, "{text}");
        }
        assert_eq!(duration("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(duration("10µs").unwrap(), Duration::from_micros(10));
        assert_eq!(duration("7ns").unwrap(), Duration::from_nanos(7));
        for bad in [
            "abc",
            "",
            "10",
            "1x",
            "-5m",
            "s",
            "5 m",
            "1h-5m",
            "99999999999999999999999h",
            ".",
        ] {
            let err = duration(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(duration("abc").unwrap_err().contains("1h30m"));
    }

    #[test]
    fn durations_format_like_go() {
        for (d, s) in [
            (Duration::from_secs(420), "7m0s"),
            (Duration::from_secs(4200), "1h10m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::ZERO, "0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(59), "59s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(duration(s).unwrap(), d, "round trip {s}");
        }
    }

    #[test]
    fn booleans_are_strict() {
        for t in ["true", "TRUE", "True", "1", " true "] {
            assert!(boolean(t).unwrap());
        }
        for f in ["false", "FALSE", "0"] {
            assert!(!boolean(f).unwrap());
        }
        for bad in ["yes", "no", "on", "", "2", "t"] {
            assert!(boolean(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(byte_size("1024").unwrap(), 1024);
        assert_eq!(byte_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(byte_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(byte_size("2gib").unwrap(), 2 << 30);
        assert_eq!(byte_size("10KB").unwrap(), 10_000);
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "1 XB",
            "-1",
            "99999999999999999999",
            "5bb",
        ] {
            assert!(byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(percent("90").unwrap(), 90);
        assert_eq!(percent("85%").unwrap(), 85);
        for bad in ["0", "101", "abc", "", "-5", "50.5"] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts() {
        let m = mount("/tmp:/mnt/cache").unwrap();
        assert_eq!(
            m,
            Mount {
                host: "/tmp".into(),
                sandbox: "/mnt/cache".into(),
                read_only: false
            }
        );
        assert!(mount("/tmp:/mnt/cache:ro").unwrap().read_only);
        assert!(mount("/tmp:/mnt/cache:xx").unwrap_err().contains("mode"));
        assert!(
            mount("/does/not/exist/x:/mnt")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(mount("/tmp:relative").unwrap_err().contains("absolute"));
        assert!(mount("/tmp:/mnt/../etc").unwrap_err().contains(".."));
        assert!(mount("/tmp:/").unwrap_err().contains("root"));
        assert!(mount("tmp:/mnt").unwrap_err().contains("absolute"));
        assert!(mount("/tmp").is_err());
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(http_url("https://x.example/").unwrap(), "https://x.example");
        assert_eq!(
            http_url("http://192.168.2.2").unwrap(),
            "http://192.168.2.2"
        );
        for bad in [
            "ftp://x",
            "x.example",
            "https://",
            "http://:80",
            "https://a b",
        ] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
        assert!(is_env_name("AWS_REGION") && is_env_name("_x1"));
        assert!(!is_env_name("1X") && !is_env_name("A-B") && !is_env_name(""));
        assert_eq!(edit_distance("SPACELIFT_DEBGU", "SPACELIFT_DEBUG"), 2);
    }
}
